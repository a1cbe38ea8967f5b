import json

import pytest

from shadowattn_tvm import targets
from shadowattn_tvm.targets import DeviceProfile, DeviceProfileError


def test_known_profiles():
    assert targets.known() == ["host", "snapdragon-8gen2", "snapdragon-8gen3"]


@pytest.mark.parametrize("name,mcpu,hexagon", [("snapdragon-8gen2", "cortex-a715", "hexagonv73"),
                                               ("snapdragon-8gen3", "cortex-a720", "hexagonv75")])
def test_phone_profiles(name, mcpu, hexagon):
    device = targets.get(name)
    assert isinstance(device, DeviceProfile) and device.name == name and device.rpc_key == name
    cpu = device.cpu
    assert cpu.kind.name == "llvm" and str(cpu.attrs["mtriple"]) == "aarch64-linux-gnu"
    assert str(cpu.attrs["mcpu"]) == mcpu
    assert {"+neon", "+dotprod", "+fullfp16", "+i8mm"} <= set(map(str, cpu.attrs["mattr"]))
    assert "arm_cpu" in cpu.keys and not bool(cpu.attrs["feature.has_sve"])  # SVE is not exposed on these phones
    assert device.npu.kind.name == "hexagon" and str(device.npu.attrs["mcpu"]) == hexagon
    assert device.gpu.kind.name == "opencl" and "adreno" in device.gpu.keys
    assert str(device.gpu.host.attrs["mtriple"]) == "aarch64-linux-gnu"  # the GPU's host is the phone CPU
    assert device.cross_compiler == "aarch64-linux-gnu-g++" and device.is_cross


def test_host_profile(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 7)
    device = targets.get("host")
    assert device.gpu is None and device.npu is None and device.cross_compiler is None and not device.is_cross
    assert device.cpu.kind.name == "llvm"
    fresh = targets.parse(json.loads((targets._DEVICES / "host.json").read_text()))  # noqa: SLF001
    assert int(fresh.cpu.attrs["num-cores"]) == 7


def test_get_returns_the_same_profile_and_passes_profiles_through():
    device = targets.get("snapdragon-8gen3")
    assert targets.get("snapdragon-8gen3") is device and targets.get(device) is device
    assert device.to_json()["cpu"]["mcpu"] == "cortex-a720"
    json.dumps(device.to_json())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown device 'snapdragon-9'; known: host, snapdragon-8gen2, snapdragon-8gen3"):
        targets.get("snapdragon-9")


def _write(tmp_path, data, name="phone.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


GOOD = {"name": "my-phone", "cpu": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78",
                                    "mattr": ["+neon", "+dotprod"]},
        "gpu": {"tag": "qcom/adreno-opencl", "host": "cpu"}, "npu": None,
        "cross_compiler": "aarch64-linux-gnu-g++"}


def test_user_profile_file(tmp_path):
    device = targets.get(str(_write(tmp_path, GOOD)))
    assert device.name == "my-phone" and device.rpc_key == "my-phone" and device.npu is None
    assert str(device.cpu.attrs["mcpu"]) == "cortex-a78" and device.gpu.kind.name == "opencl"
    assert device.source.endswith("phone.json")


@pytest.mark.parametrize("data,message", [
    ("{not json", r"invalid JSON at line 1"),
    ([1, 2], r"top level: expected a JSON object"),
    ({"cpu": GOOD["cpu"]}, r"missing required key 'name'"),
    ({**GOOD, "cpus": 1}, r"unknown keys \['cpus'\]"),
    ({**GOOD, "name": "My Phone"}, r"name: expected a lowercase name"),
    ({**GOOD, "cpu": {**GOOD["cpu"], "mcpu": "cortex-a72O"}}, r"cpu: LLVM \d+ does not know mcpu 'cortex-a72O'"),
    ({**GOOD, "cpu": {**GOOD["cpu"], "bogus": 1}}, r"cpu: Unknown config option 'bogus'"),
    ({**GOOD, "npu": {"tag": "qcom/hexagon-v99"}}, r"npu: unknown TVM target tag 'qcom/hexagon-v99'"),
    ({**GOOD, "gpu": {"kind": "llvm"}}, r"gpu: target kind 'llvm' cannot be the gpu"),
    ({**GOOD, "cross_compiler": None}, r"cross_compiler: the cpu target is for aarch64-linux-gnu"),
    ({**GOOD, "gpu": {"tag": "qcom/adreno-opencl", "kind": "opencl"}}, r"exactly one of 'kind'"),
    ({**GOOD, "cpu": {**GOOD["cpu"], "num-cores": 0}},
     r"cpu: 'num-cores' must be a whole number >= 1 \(or \"auto\" for this machine's count\), got 0$"),
    ({**GOOD, "cpu": {**GOOD["cpu"], "num-cores": -4}}, r"cpu: 'num-cores' must be a whole number >= 1 .*got -4$"),
    ({**GOOD, "cpu": {**GOOD["cpu"], "num-cores": True}}, r"cpu: 'num-cores' must be a whole number >= 1 .*got true$"),
    ({**GOOD, "cpu": {**GOOD["cpu"], "opt-level": 4}}, r"cpu: 'opt-level' must be a whole number 0\.\.3, got 4$"),
    ({**GOOD, "npu": {"tag": "qcom/hexagon-v75", "num-cores": 0}}, r"npu: 'num-cores' must be a whole number >= 1"),
    ({**GOOD, "npu": {"tag": "qcom/hexagon-v75", "vtcm-capacity": -1}},
     r"npu: 'vtcm-capacity' must be a whole number >= 0, got -1$"),
    ({**GOOD, "gpu": {"tag": "qcom/adreno-opencl", "host": "cpu", "max_num_threads": 0}},
     r"gpu: 'max_num_threads' must be a whole number >= 1, got 0$"),
    ({**GOOD, "gpu": {"kind": "opencl", "host": {"kind": "llvm", "num-cores": -1}}},
     r"gpu\.host: 'num-cores' must be a whole number >= 1"),
])
def test_bad_profile_files_say_what_and_where(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(DeviceProfileError, match=message) as info:
        targets.get(str(path))
    assert str(path) in str(info.value)


def test_missing_profile_file(tmp_path):
    with pytest.raises(DeviceProfileError, match="does not exist"):
        targets.get(str(tmp_path / "nope.json"))
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DeviceProfileError, match=r"dir\.json is a directory: pass the profile JSON file itself$"):
        targets.get(str(tmp_path / "dir.json"))
