"""aif's control plane: the API process and three of its four roles.

Layout: :mod:`api.app` builds the FastAPI application and composes the roles a process runs;
:mod:`api.frontend`, :mod:`api.model_job_executor` and :mod:`api.chat_job_executor` are
roles (the fourth, the task-executor-manager, is :mod:`scaler`). :mod:`api.routes` holds one
router per resource; :mod:`api.services` the registry behind them; :mod:`api.store` the two
stores; :mod:`api.deployers` where models run on this machine; :mod:`api.routing` how the
chat-job-executor picks an instance; :mod:`api.cli` the ``aif`` command. What every role
shares (records, protocols, settings) is :mod:`domain`.
"""
