"""LoRA fine-tuning through peft (``finetune=lora``) and its baseline ``finetune=full``: the
adapter starts as the identity, only it trains (the base bit-identical after training), merging
equals base + adapter, a LoRA run saves the adapter alone and records its base with a sha256,
loads back (sample, export merged into a plain run folder), resumes bit for bit, and refuses
what cannot work in one sentence."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.commands.train import train
from diffusion.errors import CheckpointError, ConfigError
from diffusion.models.lora import LoRA, adapter_state, add_lora, is_lora, merge_lora
from diffusion.models.unet_attn import AttentionUNet
from diffusion.runs.load import load_run
from diffusion.training import checkpoint as ckpt
from hydra_utils import compose_config, debug_overrides
from test_train import SMALL_MODELS, assert_same_state, run_training

TINY_ATTN = ("model=unet_attn", *SMALL_MODELS["unet_attn"])


def tiny_unet(seed: int = 0) -> AttentionUNet:
    torch.manual_seed(seed)
    return AttentionUNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                         attention_resolutions=(8,), norm_groups=4, image_size=16).eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 16, 16, generator=g), torch.tensor([5, 300, 900])


def test_the_adapter_starts_as_the_identity_and_only_it_trains():
    model = tiny_unet()
    x, t = inputs()
    with torch.no_grad():
        before = model(x, t)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, LoRA(rank=2))
    with torch.no_grad():
        assert torch.equal(model(x, t), before)  # B = 0: exactly the base network
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        (model(x, t) - 1).pow(2).mean().backward()
        optimizer.step()
    state = model.state_dict()
    for key, value in base.items():  # the base layers, renamed by peft, bit-identical
        wrapped = key.rsplit(".", 1)
        name = f"{wrapped[0]}.base_layer.{wrapped[1]}"
        assert torch.equal(state.get(name, state.get(key)), value), key
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in state.items() if "lora_B" in k)


def test_merging_equals_base_plus_adapter():
    model = add_lora(tiny_unet(), LoRA(rank=4, alpha=8.0))
    with torch.no_grad():  # a non-zero adapter, as training leaves it
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    x, t = inputs()
    with torch.no_grad():
        unmerged = model(x, t)
        merged = merge_lora(model)
        assert not is_lora(merged)
        torch.testing.assert_close(merged(x, t), unmerged, atol=1e-5, rtol=0)
    plain = tiny_unet(seed=7)  # a network built without LoRA takes the merged weights
    plain.load_state_dict(merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t), unmerged, atol=1e-5, rtol=0)


def test_targets_by_name_and_in_one_sentence():
    model = tiny_unet()
    chosen = LoRA(rank=2, target_modules=["qkv", "proj"]).targets(model)
    assert chosen and all(name.endswith((".qkv", ".proj")) for name in chosen)
    add_lora(model, LoRA(rank=2, target_modules=["qkv", "proj"]))
    adapted = {name.split(".lora_")[0] for name in adapter_state(model.state_dict())}
    assert adapted == set(chosen)
    with pytest.raises(ConfigError, match="'to_q', which is no convolution or linear layer"):
        LoRA(target_modules=["to_q"]).targets(tiny_unet())
    with pytest.raises(ConfigError, match="finetune.rank"):
        LoRA(rank=0)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_mnist_root):
    run, _ = run_training(tmp_path_factory.mktemp("base"), tiny_mnist_root, *TINY_ATTN,
                          name="base")
    return run


def test_a_lora_run_saves_the_adapter_and_loads_as_base_plus_adapter(
        tmp_path, tiny_mnist_root, base_run):
    base_ckpt = ckpt.latest_checkpoint(base_run / "checkpoints")
    digest = ckpt.file_sha256(base_ckpt)
    # the model settings come from the base run, whatever the command line says
    run, summary = run_training(tmp_path, tiny_mnist_root, "model=basic", f"init_from={base_run}",
                                "finetune=lora", "finetune.rank=2", "data=fashion_mnist",
                                name="lora")
    assert summary["step"] == 4
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.model == OmegaConf.load(base_run / "config.yaml").model
    assert saved.finetune.base.sha256 == digest == ckpt.file_sha256(base_ckpt)
    state = ckpt.load(ckpt.latest_checkpoint(run / "checkpoints"))
    for weights in (state["model"], state["ema"]["model"]):
        assert weights and all(".lora_" in key for key in weights)
    adapter_bytes = ckpt.latest_checkpoint(run / "checkpoints").stat().st_size
    assert adapter_bytes < base_ckpt.stat().st_size
    # loading: the base's weights, the adapter on them, merged
    model, _, _ = load_run(run)
    base_model, _, _ = load_run(base_run)
    manual = add_lora(base_model, LoRA(rank=2))
    manual.load_state_dict(state["ema"]["model"], strict=False)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), manual(x, t), atol=1e-5, rtol=0)
    # export format=run: a plain run folder of the merged network, sampled like any run
    from diffusion.commands.export import export
    from diffusion.commands.sample import sample

    out = export(compose_config([f"run={run}", f"out={tmp_path / 'merged'}", "format=run"],
                                config_name="export"))
    plain, _, plain_cfg = load_run(out)
    assert plain_cfg["finetune"] == {"method": "none"}
    assert plain_cfg["exported_from"]["lora_merged"] is True
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t), model(x, t), atol=1e-6, rtol=0)
    sample(compose_config([f"run={out}", "sampler.steps=2", "n=2", "device=cpu",
                           f"out={tmp_path / 'g.png'}"], config_name="sample"))
    assert (tmp_path / "g.png").is_file()


def test_a_lora_run_resumes_bit_exactly(tmp_path, tiny_mnist_root, base_run):
    args = (f"init_from={base_run}", "finetune=lora", "finetune.rank=2",
            "trainer.ckpt_every=3", "trainer.keep_last=0", "trainer.sample_every=0")
    straight, _ = run_training(tmp_path, tiny_mnist_root, *args, "trainer.max_steps=6",
                               name="straight")
    resumed, _ = run_training(tmp_path, tiny_mnist_root, *args, "trainer.max_steps=3",
                              name="resumed")
    cfg = OmegaConf.load(resumed / "config.yaml")
    cfg.resume, cfg.trainer.max_steps = str(resumed), 6
    train(cfg, resumed)
    assert_same_state(straight, resumed)


def test_full_finetuning_starts_from_the_base_and_records_it(tmp_path, tiny_mnist_root,
                                                            base_run):
    run, summary = run_training(tmp_path, tiny_mnist_root, f"init_from={base_run}",
                                "finetune=full", "trainer.max_steps=1", name="full")
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.finetune.method == "full" and saved.finetune.base.sha256
    assert saved.trainer.init_from == saved.finetune.base.checkpoint
    state = ckpt.load(ckpt.latest_checkpoint(run / "checkpoints"))
    assert not any(".lora_" in key for key in state["model"])  # the whole network


def test_what_cannot_work_is_refused_in_one_sentence(tmp_path, tiny_mnist_root, base_run):
    with pytest.raises(ConfigError, match=r"finetune=lora adapts a trained model: add "
                                          r"init_from=<its run folder>"):
        train(compose_config(debug_overrides(tiny_mnist_root, "finetune=lora")), tmp_path / "a")
    with pytest.raises(ConfigError, match="name two starts"):
        train(compose_config(debug_overrides(tiny_mnist_root, f"init_from={base_run}",
                                             "trainer.init_from=elsewhere")), tmp_path / "b")
    # a LoRA run whose base checkpoint changed afterwards does not load
    base_copy = tmp_path / "base_copy"
    (base_copy / "checkpoints").mkdir(parents=True)
    (base_copy / "config.yaml").write_text((base_run / "config.yaml").read_text())
    source = ckpt.latest_checkpoint(base_run / "checkpoints")
    (base_copy / "checkpoints" / source.name).write_bytes(source.read_bytes())
    run, _ = run_training(tmp_path, tiny_mnist_root, f"init_from={base_copy}", "finetune=lora",
                          "trainer.max_steps=1", name="lora")
    changed = ckpt.load(base_copy / "checkpoints" / source.name)
    first = next(iter(changed["ema"]["model"]))
    changed["ema"]["model"][first] = changed["ema"]["model"][first] + 1.0
    ckpt.save_atomic(changed, base_copy / "checkpoints" / source.name)
    with pytest.raises(CheckpointError, match="changed since the run started"):
        load_run(run)
    # a LoRA run as the base of another: merged first, in one sentence
    with pytest.raises(ConfigError, match="is itself a LoRA or ControlNet run"):
        train(compose_config(debug_overrides(tiny_mnist_root, f"init_from={run}",
                                             "finetune=lora")), tmp_path / "c")
