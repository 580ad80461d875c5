"""Fixtures shared by the stack scenario's test modules."""
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# the model inventories/local/group_vars/gpu.yml deploys, saved by prepare.yml
GPU_MODEL_FILE = Path.home() / ".cache" / "kbxy" / "models" / "general-x4v3-seed1.pth"


@pytest.fixture(scope="session")
def upscale_reference(tmp_path_factory):
    """``upscale_reference(source_png, answer, tile) -> dict``: the answer of the deployed
    service compared with the same upscale made on the controller by the service's own
    code (tests/helpers/esrgan_reference.py in .venv-esrgan, the same model file)."""
    work = tmp_path_factory.mktemp("upscale-reference")
    calls = []

    def compare(source, answer, tile):
        calls.append(None)
        src, ans = work / f"source-{len(calls)}.png", work / f"answer-{len(calls)}.img"
        src.write_bytes(source)
        ans.write_bytes(answer)
        proc = subprocess.run([str(ROOT / ".venv-esrgan" / "bin" / "python"), str(ROOT / "tests" / "helpers" / "esrgan_reference.py"),
                               "--model", str(GPU_MODEL_FILE), "--tile", str(tile), str(src), str(ans)],
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.splitlines()[-1])
        print(f"\nupscale compared with the controller's reference: {result}")
        return result

    return compare
