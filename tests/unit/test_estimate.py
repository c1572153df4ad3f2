"""Estimate: steps and tokens from the dataset and hyperparameters; duration, GPU-hours, cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import EXAMPLES_DIR

from tramontane_cli.main import main
from tramontane_workers.contract.estimate import (
    ASSUMED_MODEL_PARAMS,
    GPU_PROFILES,
    ModelParams,
    ModelSizeRead,
    TrainingShape,
    estimate,
    gpu_profile,
    params_from_hf_config,
    params_in_words,
    plan_steps,
)

MISTRAL_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 32768,
}


def test_steps_from_epochs_and_from_training_steps() -> None:
    by_epochs = plan_steps(
        1000, 500_000, TrainingShape(batch_size=16, sequence_length=4096, epochs=2)
    )
    assert by_epochs == (126, 2, 126 * 16 * 500)  # ceil(1000/16) = 63 steps per epoch
    by_steps = plan_steps(1000, 500_000, TrainingShape(16, 4096, training_steps=50))
    assert by_steps == (50, 0.8, 50 * 16 * 500)
    truncated = plan_steps(10, 100_000, TrainingShape(2, 1024, training_steps=5))
    assert truncated[2] == 5 * 2 * 1024  # conversations longer than the sequence are cut
    with pytest.raises(ValueError, match="exactly one"):
        plan_steps(10, 100, TrainingShape(2, 1024, training_steps=5, epochs=1))
    with pytest.raises(ValueError, match="no valid conversation"):
        plan_steps(0, 0, TrainingShape(2, 1024, epochs=1))


def test_gpu_names_map_to_profiles() -> None:
    assert [gpu_profile(n).name for n in ("A100-80GB", "nvidia-h100-sxm", "H200", "a10", "L4", "T4")] == [  # type: ignore[union-attr]
        "A100", "H100", "H200", "A10", "L4", "T4",
    ]  # fmt: skip
    assert getattr(gpu_profile("NVIDIA-A10G"), "name", None) == "A10"  # AWS's A10 variant
    assert gpu_profile("MI300X") is None
    assert {p.name for p in GPU_PROFILES} == {"A100", "H100", "H200", "L4", "T4", "A10", "CPU"}


def test_duration_gpu_hours_and_cost_follow_the_assumptions() -> None:
    shape = TrainingShape(batch_size=16, sequence_length=8192, training_steps=500)
    one = estimate(
        conversations=10_000, dataset_tokens=5_000_000, shape=shape, model_params=7.2e9,
        gpu_types=["H100"], price_per_gpu_hour={"H100": 7.0}, currency="EUR",
    )  # fmt: skip
    two = estimate(
        conversations=10_000, dataset_tokens=5_000_000, shape=shape, model_params=7.2e9,
        gpus=2, gpu_types=["H100"], price_per_gpu_hour={"H100": 7.0}, currency="EUR",
    )  # fmt: skip
    row, row2 = one.per_gpu_type[0], two.per_gpu_type[0]
    expected_tps = 989e12 * 0.35 / (4 * 7.2e9)
    assert row.tokens_per_second_per_gpu == pytest.approx(expected_tps, rel=1e-3)
    assert row.duration_seconds == pytest.approx(one.train_tokens / expected_tps, rel=1e-3)
    assert row.cost == pytest.approx(row.gpu_hours * 7.0, abs=0.01) and row.currency == "EUR"
    assert row2.duration_seconds == pytest.approx(row.duration_seconds / (2 * 0.9), rel=1e-3)
    assert row2.gpu_hours > row.gpu_hours  # data parallelism is not free
    everything = estimate(conversations=10, dataset_tokens=1000, shape=shape, model_params=7.2e9)
    names = [r.gpu_type for r in everything.per_gpu_type]
    assert names == [p.name for p in GPU_PROFILES] and all(
        r.cost is None for r in everything.per_gpu_type
    )
    fits = {r.gpu_type: r.fits_in_memory for r in everything.per_gpu_type}
    assert fits["A100"] and not fits["T4"]  # 14.5 GB of bf16 weights do not fit 80% of 16 GiB


def test_a_known_size_is_used_and_an_unknown_one_assumed_out_loud() -> None:
    shape = TrainingShape(batch_size=4, sequence_length=2048, training_steps=10)
    known = estimate(
        conversations=40, dataset_tokens=40_000, shape=shape, gpu_types=["H100"],
        model_params=ModelParams.of(ModelSizeRead("file:///m", params=24e9)),
    )  # fmt: skip
    assert (known.model_params, known.model_params_source, known.assumptions) == (
        24_000_000_000, "Read", []
    )  # fmt: skip
    given = estimate(conversations=40, dataset_tokens=40_000, shape=shape, model_params=24e9)
    assert (given.model_params_source, given.assumptions) == ("Given", [])
    unread = ModelSizeRead("hf://mistralai/Mistral-Small-24B", error="private repository")
    assumed = estimate(
        conversations=40, dataset_tokens=40_000, shape=shape, gpu_types=["H100"],
        model_params=ModelParams.of(unread),
    )  # fmt: skip
    assert assumed.model_params == ASSUMED_MODEL_PARAMS == 7_248_023_552
    assert assumed.model_params_source == "Assumed"
    assert assumed.assumptions == [
        "base model size unknown (could not read hf://mistralai/Mistral-Small-24B: private "
        "repository); assumed 7.2B parameters (Mistral 7B v0.3)"
    ]
    # The figures are those of the assumed size, not of the real (bigger) model.
    tps = assumed.per_gpu_type[0].tokens_per_second_per_gpu
    assert tps > known.per_gpu_type[0].tokens_per_second_per_gpu
    assert ModelParams.of(None).assumption == (
        "base model size unknown (no base model URI); assumed 7.2B parameters (Mistral 7B v0.3)"
    )
    assert ModelParams.of(ModelSizeRead("s3://m", params=0.0)).source == "Assumed"
    words = [params_in_words(n) for n in (7_248_023_552, 24e9, 123e9, 4.3e6, 1.5e12, 512)]
    assert words == ["7.2B", "24B", "123B", "4.3M", "1.5T", "512"]


def test_parameter_count_of_mistral_7b() -> None:
    assert params_from_hf_config(MISTRAL_7B) == 7_248_023_552
    with pytest.raises(ValueError, match="hidden_size"):
        params_from_hf_config({**MISTRAL_7B, "hidden_size": "big"})


def test_cli_estimate_from_a_manifest_prints_status_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(MISTRAL_7B))
    data = EXAMPLES_DIR / "datasets" / "good.jsonl"
    manifest = tmp_path / "ftj.yaml"
    manifest.write_text(
        "apiVersion: tramontane.dev/v1alpha1\nkind: FineTuneJob\n"
        "metadata: {name: t, namespace: team}\n"
        f"spec:\n  baseModel: {{uri: 'file://{model}'}}\n"
        f"  trainingFiles: [{{uri: '{data.as_uri()}'}}]\n"
        "  hyperparameters: {epochs: 3, batchSize: 2, sequenceLength: 2048}\n"
        "  resources: {workers: 2, gpusPerWorker: 1, gpuType: A100-80GB}\n"
        "  output: {uri: 'file:///tmp/out'}\n"
    )
    cluster = EXAMPLES_DIR / "computecluster-aks-westeurope.yaml"
    assert main(["finetune", "estimate", str(manifest), "--cluster", str(cluster), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["steps"] == 9 and status["epochs"] == 3.0  # ceil(5 / 2) * 3
    assert status["modelParams"] == 7_248_023_552 and status["modelParamsSource"] == "Read"
    assert "assumptions" not in status  # the size was read: nothing assumed
    (row,) = status["perGpuType"]
    assert row["gpuType"] == "A100-80GB" and row["currency"] == "EUR" and row["cost"] >= 0
    assert main(["finetune", "estimate", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "A100-80GB" in out and "model: 7.2B parameters (from " in out
    assert "assumed" not in out
    bad = EXAMPLES_DIR / "datasets" / "bad.jsonl"
    manifest.write_text(manifest.read_text().replace(data.as_uri(), bad.as_uri()))
    assert main(["finetune", "estimate", str(manifest)]) == 1
    assert f"{bad.as_uri()}:3: messages[1].weight" in capsys.readouterr().err  # errors: stderr


def test_cli_estimate_from_flags(capsys: pytest.CaptureFixture[str]) -> None:
    data = str(EXAMPLES_DIR / "datasets" / "good.jsonl")
    code = main(["finetune", "estimate", "--dataset", data, "--training-steps", "10",
                 "--gpu-type", "H100", "--price-per-gpu-hour", "2.5", "--currency", "EUR"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("10 steps") and "EUR" in out and "model: 7.2B parameters (assumed)" in out
    assert out.splitlines()[-1].startswith("assumed: base model size unknown (no manifest")
    assert main(["finetune", "estimate"]) == 2
    both = ["--dataset", data, "--training-steps", "10", "--epochs", "2"]
    assert main(["finetune", "estimate", *both]) == 2
    assert main(["finetune", "estimate", "--dataset", data]) == 0  # one epoch by default
    assert capsys.readouterr().out.startswith("1 steps, 1 epochs")  # ceil(5 / 8)


def test_docs_table_matches_the_profiles() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "finetuning.md").read_text()
    rows = {}
    for line in docs.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1].replace(".", "").isdigit():
            rows[cells[0].split(" ")[0]] = cells
    for profile in GPU_PROFILES:
        name, tflops, mfu, memory, tokens = rows[profile.name]
        assert float(tflops) == profile.peak_tflops and float(mfu) == profile.mfu
        assert float(memory.split()[0]) == profile.memory_gib
        expected = round(profile.tokens_per_second(7_248_023_552, "lora"))
        assert int(tokens.split()[0].replace(",", "")) == expected, name


def test_cli_estimate_says_what_it_assumed_of_an_hf_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network, whatever the CLI does
    data = EXAMPLES_DIR / "datasets" / "good.jsonl"
    manifest = tmp_path / "ftj.yaml"
    manifest.write_text(
        "apiVersion: tramontane.dev/v1alpha1\nkind: FineTuneJob\n"
        "metadata: {name: t, namespace: team}\n"
        "spec:\n  baseModel: {uri: 'hf://mistralai/Mistral-Small-24B-Instruct-2501'}\n"
        f"  trainingFiles: [{{uri: '{data.as_uri()}'}}]\n"
        "  hyperparameters: {trainingSteps: 10, batchSize: 2, sequenceLength: 2048}\n"
        "  resources: {workers: 1, gpusPerWorker: 1, gpuType: H100}\n"
        "  output: {uri: 'file:///tmp/out'}\n"
    )
    assumption = (
        "base model size unknown (could not read hf://mistralai/Mistral-Small-24B-Instruct-2501: "
        "the CLI does not fetch hf:// models); assumed 7.2B parameters (Mistral 7B v0.3)"
    )
    assert main(["finetune", "estimate", str(manifest)]) == 0  # an assumption is still an estimate
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("model: 7.2B parameters (assumed)")
    assert lines[-1] == f"assumed: {assumption}; set --model-params to use the real size"
    assert main(["finetune", "estimate", str(manifest), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["modelParams"] == 7_248_023_552 and status["modelParamsSource"] == "Assumed"
    assert status["assumptions"] == [assumption]
    # Told the size, the CLI assumes nothing.
    given = ["finetune", "estimate", str(manifest), "--model-params", "23.6e9"]
    assert main(given) == 0
    out = capsys.readouterr().out
    assert "model: 24B parameters (--model-params)" in out and "assumed" not in out
    assert main([*given, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["modelParams"] == 23_600_000_000 and status["modelParamsSource"] == "Given"
    assert "assumptions" not in status
