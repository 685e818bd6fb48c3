"""A real S3-API server on 127.0.0.1 for the object-store tests: moto's standalone server in a
subprocess (so a test can SIGKILL it mid-upload), with IAM checks on (so wrong keys are refused),
and a TCP forwarder in front of it that can cut the connection after N bytes.

Clients reach it only the standard way: AWS_ENDPOINT_URL and AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY in the environment (the SLURM jobs inherit them through `--export=ALL`).
No mock of the client library anywhere. moto[server] comes with the `test` extra; a missing one is a
failure, never a silent skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """moto_server in a subprocess; `start` bootstraps an IAM user whose keys the tests use."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.key_id = self.secret = ""
        self.reader = ("", "")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        if not os.path.exists(exe):
            pytest.fail("moto_server not installed: pip install -e '.[test]' (moto[server] is in the test extra)")
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "6"}  # the 6 bootstrap calls below, then IAM checks
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    pytest.fail(f"moto_server did not start: {self.log_path.read_text()[-2000:]}")
                time.sleep(0.1)
        import boto3

        iam = boto3.client("iam", endpoint_url=self.url, region_name=REGION,
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="mace")
        key = iam.create_access_key(UserName="mace")["AccessKey"]
        iam.put_user_policy(UserName="mace", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        # a user who may read and check but not write (a store refusing the upload itself)
        iam.create_user(UserName="reader")
        reader = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="s3read", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                                                   {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*"}]}))
        self.reader = (reader["AccessKeyId"], reader["SecretAccessKey"])
        return self

    def client(self, endpoint: str | None = None) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=endpoint or self.url, region_name=REGION,
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def kill(self) -> None:
        """SIGKILL, as a crashed endpoint: everything it held is gone."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def requests(self) -> str:
        """The server's request log (werkzeug prints one line per request)."""
        return self.log_path.read_text(errors="replace")


class Forwarder:
    """127.0.0.1:port -> the server; `cut_after(n)` stops forwarding (and listening) after n bytes up,
    calling `on_cut` first (e.g. to kill the server). `stop` closes everything now."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.up = 0
        self.limit: int | None = None
        self.on_cut: Callable[[], None] | None = None
        self.conns: list[socket.socket] = []
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, n: int, on_cut: Callable[[], None] | None = None) -> None:
        self.limit, self.on_cut = n, on_cut

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while data := src.recv(65536):
                if upward:
                    with self.lock:
                        self.up += len(data)
                        over = self.limit is not None and self.up > self.limit
                    if over:
                        if self.on_cut:
                            self.on_cut()
                        self.stop()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                    c.close()
                except OSError:
                    pass


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """A fresh moto server and the standard AWS environment pointing at it (no host credentials)."""
    server = MotoServer(tmp_path / "moto.log").start()
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    server.client().create_bucket(Bucket="mace-archives")
    try:
        yield server
    finally:
        server.kill()
