"""kbxy.platform.realesrgan on the stack's gpu host (Debian 12, the CPU: no GPU here).

These tests were the realesrgan scenario's; the stack converges the same role on
kbxy-stack-gpu (with inventories/local/group_vars/gpu.yml), so they run here and torch is
installed once per suite. check mode on the fresh host is the stack's check step; the
idempotent rerun is AWX's deploy template (test_awx_runner.py). The service listens on the
host's address for the web hosts (socket activation: the service itself still has no
network). The HTTP tests run a small urllib client inside the host (IPAddressAllow= admits
localhost and the web hosts). The PNG is generated here with zlib and struct, so nothing
fakes the service: its answer is decoded and compared, pixel by pixel, with the same
upscale made on the controller by the service's own code. The GPU test runs
gpu-required.yml with ansible-playbook against molecule's inventory and reads the play's
output.
"""
import base64
import hashlib
import json
import os
import re
import struct
import subprocess
import time
import zlib
from pathlib import Path

import testinfra.utils.ansible_runner

from conftest import GPU_MODEL_FILE  # pylint: disable=wrong-import-order

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = Path(__file__).resolve().parent.parent
testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("gpu")

SERVICE = "kbxy-upscale"
PORT = 8100  # kbxy_gpu_port in inventories/local/group_vars/all.yml
MODEL = "general-x4v3"  # realesrgan_models in inventories/local/group_vars/gpu.yml
SCALE = 4

# Client run inside the host: argv = method, path, base64 body ("" for none), content type.
# Prints one JSON line: status, content type, base64 of the body.
CLIENT = r"""
import base64, json, sys, urllib.error, urllib.request
method, path, body, ctype = sys.argv[1:5]
req = urllib.request.Request("http://127.0.0.1:%d" + path, method=method,
                             data=base64.b64decode(body) if body else None)
if ctype:
    req.add_header("Content-Type", ctype)
try:
    with urllib.request.urlopen(req, timeout=240) as resp:
        status, headers, data = resp.status, resp.headers, resp.read()
except urllib.error.HTTPError as err:
    status, headers, data = err.code, err.headers, err.read()
print(json.dumps({"status": status, "type": headers.get("Content-Type", ""), "body": base64.b64encode(data).decode()}))
""" % PORT


def png_rgb(width, height):
    """A real RGB PNG (8 bit) with a gradient and a diagonal line."""
    rows = b""
    for y in range(height):
        row = bytearray([0])  # filter type None
        for x in range(width):
            edge = 255 if x == y else 0
            row += bytes(((x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), edge))
        rows += bytes(row)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def parse_png(data):
    """Width, height, colour type, bit depth, and the inflated pixel rows of a PNG, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        if kind == b"IHDR":
            header = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, colour = header
    return width, height, colour, depth, zlib.decompress(idat)


def request(host, method, path, body=b"", ctype=""):
    cmd = host.run(
        f"python3 -c {_quote(CLIENT)} {method} {_quote(path)} {_quote(base64.b64encode(body).decode())} {_quote(ctype)}"
    )
    assert cmd.rc == 0, cmd.stderr
    answer = json.loads(cmd.stdout)
    answer["body"] = base64.b64decode(answer["body"])
    return answer


def _quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def test_units_enabled_and_running(host):
    for unit in (f"{SERVICE}.socket", f"{SERVICE}.service"):
        assert host.service(unit).is_enabled, unit
        assert host.service(unit).is_running, unit
    execstart = host.check_output(f"systemctl show -p ExecStart --value {SERVICE}.service")
    assert "kbxy_upscale.app:create_app" in execstart and "--factory" in execstart and "--fd 3" in execstart


def test_layout_env_and_models(host):
    user = host.user(SERVICE)
    assert user.shell == "/usr/sbin/nologin"
    env = host.file(f"/etc/{SERVICE}/{SERVICE}.env")
    assert (env.user, env.group, env.mode) == ("root", SERVICE, 0o640)
    assert "KBXY_UPSCALE_DEVICE=cpu" in env.content_string
    assert "KBXY_UPSCALE_ALLOW_CPU=1" in env.content_string
    model = host.file(f"/opt/{SERVICE}/models/{MODEL}.pth")
    assert (model.user, model.group, model.mode) == ("root", SERVICE, 0o640)
    assert model.sha256sum == hashlib.sha256(GPU_MODEL_FILE.read_bytes()).hexdigest()
    # the wheelhouse and the package sources are removed from the host after the install
    assert not host.file(f"/opt/{SERVICE}/.staging").exists
    data = host.file(f"/var/lib/{SERVICE}")
    assert (data.user, data.mode) == (SERVICE, 0o750)


def test_installed_units_verify_cleanly(host):
    cmd = host.run(f"systemd-analyze verify {SERVICE}.service {SERVICE}.socket")
    assert cmd.rc == 0 and cmd.stdout.strip() + cmd.stderr.strip() == "", cmd.stdout + cmd.stderr


def test_sandbox_properties(host):
    def prop(name):
        return host.check_output(f"systemctl show -p {name} --value {SERVICE}.service")

    expected = {
        "User": SERVICE,
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "DevicePolicy": "closed",
        "PrivateNetwork": "yes",
        "PrivateUsers": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "ProtectProc": "invisible",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX",
        "ReadWritePaths": f"/var/lib/{SERVICE}",
    }
    actual = {name: prop(name) for name in expected}
    assert actual == expected
    assert "any" in prop("IPAddressDeny") or "0.0.0.0/0" in prop("IPAddressDeny")
    # the running process: no capabilities, no new privileges, seccomp filter
    pid = prop("MainPID")
    status = host.file(f"/proc/{pid}/status").content_string
    assert re.search(r"^CapEff:\s+0+$", status, re.M)
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^Seccomp:\s+2$", status, re.M)


def test_security_score_printed(host):
    out = host.check_output(f"systemd-analyze security --no-pager {SERVICE}.service")
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"systemd-analyze security {SERVICE}.service: exposure {score}")
    assert score <= 2.0, out


def test_health_on_cpu_with_the_model(host):
    answer = request(host, "GET", "/v1/health")
    assert answer["status"] == 200, answer["body"]
    health = json.loads(answer["body"])
    assert health["status"] == "ok" and health["device"] == "cpu"
    assert MODEL in health["models"]


def test_upscale_png_through_the_unit(host, upscale_reference):
    """The answer is the model's upscale of this picture: equal, within the CPU's fp32
    rounding, to the service's own code run on the controller with the same model file and
    tile (a black, grey or wrongly scaled answer fails)."""
    width, height = 24, 16
    source = png_rgb(width, height)
    started = time.monotonic()
    answer = request(host, "POST", f"/v1/upscale?model={MODEL}&format=png", source, "image/png")
    print(f"upscale {width}x{height} x{SCALE} on the CPU over HTTP: {time.monotonic() - started:.1f} s")
    assert answer["status"] == 200, answer["body"][:500]
    assert answer["type"].startswith("image/png")
    out_w, out_h, colour, depth, pixels = parse_png(answer["body"])
    assert (out_w, out_h) == (width * SCALE, height * SCALE)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    assert len(pixels) == out_h * (1 + out_w * channels * depth // 8)
    tile = int(re.search(r"^KBXY_UPSCALE_TILE=(\d+)$", host.file(f"/etc/{SERVICE}/{SERVICE}.env").content_string, re.M).group(1))
    compared = upscale_reference(source, answer["body"], tile)
    assert compared["answer_shape"] == compared["reference_shape"] == [height * SCALE, width * SCALE, 3], compared
    assert compared["max_abs_diff"] <= 2 and float(compared["psnr_db"]) >= 45, compared


def test_bad_input_is_4xx_and_service_stays_up(host):
    pid = host.check_output(f"systemctl show -p MainPID --value {SERVICE}.service")
    for body in (b"this is not an image", png_rgb(8, 8)[:40]):
        answer = request(host, "POST", f"/v1/upscale?model={MODEL}", body, "image/png")
        assert 400 <= answer["status"] < 500, (answer["status"], answer["body"][:300])
    answer = request(host, "GET", "/v1/health")
    assert answer["status"] == 200
    assert host.check_output(f"systemctl show -p MainPID --value {SERVICE}.service") == pid
    assert host.service(f"{SERVICE}.service").is_running


def test_host_without_gpu_fails_when_gpu_required(host):
    before = host.check_output(f"systemctl show -p ActiveEnterTimestamp --value {SERVICE}.service")
    proc = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, str(SCENARIO_DIR / "gpu-required.yml"), "--limit", host.backend.get_hostname()],
        capture_output=True, text=True, timeout=300, env=os.environ.copy(), check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "no NVIDIA GPU found on" in out, out[-3000:]
    assert "set realesrgan_allow_cpu: true" in out
    assert re.search(r"changed=0\s", out), out[-2000:]
    # nothing was touched: the service kept running from before the play
    assert host.check_output(f"systemctl show -p ActiveEnterTimestamp --value {SERVICE}.service") == before
