"""A fake Pulumi CLI: what the Automation API's ``LocalWorkspace`` and ``Stack`` can tell of one.

``FakePulumi`` subclasses ``PulumiCommand`` and answers the CLI calls the real SDK issues
(``stack select/init``, ``config set``/``set-all``, ``up``, ``stack output``, ``stack
history``, ``destroy``, ``stack rm``, ``cancel``), keeping stacks in memory and streaming
engine events to the Automation API's gRPC event server as the real CLI does. ``on_up`` and
``on_destroy`` let a fake cluster see what an update applies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from pulumi import automation as auto
from pulumi.automation import CommandResult
from pulumi.automation.errors import create_command_error
from pulumi.runtime.proto import events_pb2, events_pb2_grpc
from semver import VersionInfo

from infra.manifests import k8s_name, service_name
from infra.pulumi_deployer import PROJECT_NAME

MODEL_ID = "d97051120764490daf846053e16d4f25"
LWS_NAME = k8s_name("DeepSeek-R1-Distill-Qwen-7B", MODEL_ID)
TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


def lock_error(host: str, pid: int, at: datetime) -> CommandResult:
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return CommandResult(
        stdout="",
        stderr=(
            "error: the stack is currently locked by 1 lock(s). Either wait for the other "
            "process(es) to end or delete the lock file with `pulumi cancel`.\n"
            f"  file:///var/lib/aif/pulumi-state/.pulumi/locks/organization/{PROJECT_NAME}/"
            f"{MODEL_ID}/1b2c.json: created by aif@{host} (pid {pid}) at {stamp}"
        ),
        code=255,
    )


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@dataclass
class FakeStack:
    config: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    updates: int = 0


class FakePulumi(auto.PulumiCommand):
    """The Pulumi CLI, as far as the Automation API can tell."""

    def __init__(self, version: str = "3.272.0") -> None:
        # Not super().__init__(): that runs `pulumi version`, which is not installed here.
        self.command = "pulumi"
        self.version = VersionInfo.parse(version)
        self.stacks: dict[str, FakeStack] = {}
        self.calls: list[list[str]] = []
        self.envs: list[Mapping[str, str]] = []
        self.failures: dict[str, list[CommandResult]] = {}
        # What `up` and `destroy` do to the cluster: called with the stack's config.
        self.on_up: Callable[[Mapping[str, str]], None] = lambda config: None
        self.on_destroy: Callable[[Mapping[str, str]], None] = lambda config: None

    def fail(self, verb: str, *results: CommandResult) -> None:
        """The next calls of ``verb`` (``up``, ``destroy`` ...) fail with ``results``."""
        self.failures.setdefault(verb, []).extend(results)

    def verbs(self) -> list[str]:
        return [" ".join(a[:2]) if a[0] in ("stack", "config") else a[0] for a in self.calls]

    def run(
        self,
        args: list[str],
        cwd: str,
        additional_env: Mapping[str, str],
        on_output: Callable[[str], Any] | None = None,
        on_error: Callable[[str], Any] | None = None,
    ) -> CommandResult:
        args = [a for a in args if a != "--non-interactive"]
        self.calls.append(args)
        self.envs.append(dict(additional_env))
        verb = " ".join(args[:2]) if args[0] in ("stack", "config") else args[0]
        queued = self.failures.get(verb)
        if queued:
            raise create_command_error(queued.pop(0))
        result = self._answer(verb, args, on_output)
        if result.code != 0:
            raise create_command_error(result)
        return result

    def _answer(
        self, verb: str, args: list[str], on_output: Callable[[str], Any] | None
    ) -> CommandResult:
        name = _flag(args, "--stack") or args[-1]
        stack = self.stacks.get(name)
        if verb == "stack init":
            self.stacks[args[2]] = FakeStack()
            return _ok()
        if stack is None:
            return CommandResult("", f"error: no stack named '{name}' found", 255)
        if verb == "stack select":
            return _ok()
        if verb == "config set-all":
            pairs = [a for a in args if "=" in a and not a.startswith("--")]
            stack.config.update(pair.split("=", 1) for pair in pairs)
            return _ok()
        if verb == "config set":
            stack.config[args[2]] = args[-1]
            return _ok()
        if verb == "up":
            self._stream(_flag(args, "--event-log"), _up_events(stack.config))
            if on_output is not None:
                on_output("Updating (fake):")
            stack.updates += 1
            self.on_up(stack.config)
            lws = k8s_name(stack.config["modelName"], stack.config["modelId"])
            stack.outputs = {
                "lwsName": lws,
                "serviceName": service_name(lws),
                "clusterIp": "10.96.0.20",
                "port": 8000,
                "replicas": int(stack.config["replicas"]),
                "specHash": stack.config["specHash"],
            }
            return _ok("Update succeeded")
        if verb == "stack output":
            return _ok(json.dumps(stack.outputs))
        if verb == "stack history":
            return _ok(json.dumps([_summary(stack)] if stack.updates else []))
        if verb == "destroy":
            self.on_destroy(stack.config)
            stack.outputs = {}
            return _ok("Destroy succeeded")
        if verb == "stack rm":
            del self.stacks[name]
            return _ok()
        if verb == "cancel":
            return _ok("The currently running update has been canceled!")
        raise AssertionError(f"unexpected pulumi call {args}")

    @staticmethod
    def _stream(target: str | None, events: list[dict[str, Any]]) -> None:
        # Newer CLIs send engine events over gRPC to the Automation API's server.
        if target is None:
            return
        assert target.startswith("tcp://"), target
        requests = [events_pb2.EventRequest(event=json.dumps(e)) for e in events]
        with grpc.insecure_channel(target.removeprefix("tcp://")) as channel:
            events_pb2_grpc.EventsStub(channel).StreamEvents(iter(requests))


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _ok(stdout: str = "") -> CommandResult:
    return CommandResult(stdout=stdout, stderr="", code=0)


def _summary(stack: FakeStack) -> dict[str, Any]:
    now = datetime.now(UTC).strftime(TIMESTAMP)
    return {
        "kind": "update",
        "startTime": now,
        "endTime": now,
        "message": "",
        "environment": {},
        "config": {},
        "result": "succeeded",
        "version": stack.updates,
    }


def _up_events(config: Mapping[str, str]) -> list[dict[str, Any]]:
    lws_type = "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet"
    lws_urn = f"urn:pulumi:{MODEL_ID}::{PROJECT_NAME}::{lws_type}::{LWS_NAME}-lws"
    meta = {"op": "create", "urn": lws_urn, "type": lws_type, "provider": ""}
    return [
        {"sequence": 1, "timestamp": 0, "resourcePreEvent": {"metadata": meta}},
        {"sequence": 2, "timestamp": 0, "resOutputsEvent": {"metadata": meta}},
        {"sequence": 3, "timestamp": 0, "cancelEvent": {}},
    ]
