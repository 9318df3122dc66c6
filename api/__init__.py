"""aif's control plane: the frontend API, the model-job-executor and the chat-job-executor.

Layout: :mod:`api.app` builds the FastAPI application; :mod:`api.routes` holds one router per
resource; :mod:`api.services` the domain logic behind them; :mod:`api.store` persistence;
:mod:`api.executor` the reconciler; :mod:`api.deployers` where models run; :mod:`api.gateway`
inference routing; :mod:`api.engine` the local engines; :mod:`api.cli` the ``aif`` command.
"""
