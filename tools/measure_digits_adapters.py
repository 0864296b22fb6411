"""Measure the digits LoRA and ControlNet runs (the numbers in the README / the issue).

    # LoRA: share of the target digit before/after, adapter vs model size, steps/s vs full
    python tools/measure_digits_adapters.py lora --base WORKDIR_BASE --run WORKDIR_LORA
    # ControlNet: how well samples follow the conditioning, against the base without it
    python tools/measure_digits_adapters.py controlnet --base WORKDIR_BASE --run WORKDIR_CN \
        --condition outline

The digit classifier is scikit-learn's SVC (RBF, gamma 0.001, C 10) on the real 8x8 digits of
the train split (pixels / 255, the dataset's 0..255 scale), scored on the test split; samples are
classified the same way. Sampling is the runs' own configured sampler (Euler-Maruyama, 100 steps)
with fixed seeds, base and adapted runs from the same noise. Throughput: the compiled train step
(batch 128) of the LoRA run and of a full fine-tune of the same network (the plain config: every
parameter trains), timed alternately in one process, median of 3 rounds of 20 steps.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from diffjax.config import load
from diffjax.experiment import build_experiment, open_checkpoints, restore_params
from diffjax.sampling.generate import draw_batch, make_generate_fn


def classifier():
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).reshape(len(bunch.images), -1) / 255.0
    test = np.arange(len(x)) % 10 == 0  # the dataset's split (every 10th image is test)
    model = SVC(gamma=0.001 * 16 ** 2, C=10.0).fit(x[~test], bunch.target[~test])
    accuracy = float(np.mean(model.predict(x[test]) == bunch.target[test]))
    return model, accuracy


def samples(config, workdir: str, count: int, seed: int = 7, extra=None, generate_fn=None):
    experiment = build_experiment(config)
    checkpointer = open_checkpoints(workdir)
    try:
        with experiment.activate():
            params = restore_params(experiment, checkpointer, checkpointer.latest_step(), True)
            if generate_fn is None:
                generate = make_generate_fn(config, experiment.model, experiment.sde,
                                            experiment.mesh, count)
            else:
                generate = generate_fn(config, experiment.model, experiment.sde,
                                       experiment.mesh, count)
            pixels, _, _ = draw_batch(config, generate, params, jax.random.key(seed), count,
                                      extra_inputs=extra or ())
    finally:
        checkpointer.close()
    return pixels, experiment


def steps_per_second(configs: dict, rounds: int = 3, steps: int = 20) -> dict[str, float]:
    from diffjax.state.train_state import create_state
    from diffjax.training.objectives import objective_for
    from diffjax.training.step import make_train_step

    compiled = {}
    for name, config in configs.items():
        experiment = build_experiment(config)
        frozen = experiment.frozen
        # Initialised outside the mesh context, as the training loop does (qwix's LoRA init
        # applies the kernel's logical constraint to its rank-2 B under active rules).
        state = create_state(experiment.model, experiment.optimizer, experiment.example_input(),
                             0, experiment.spec, trainable=frozen.select if frozen else None)
        with experiment.activate():
            extra = () if frozen is None else (frozen.params,)
            step = jax.jit(make_train_step(config, experiment.model, experiment.sde,
                                           experiment.optimizer, objective_for(experiment),
                                           combine=frozen.combine if frozen else None),
                           donate_argnums=(0,))
            b, d = config.training.batch_size, config.data
            rng = np.random.default_rng(0)
            batch = {"image": rng.integers(0, 256, (b, d.image_size, d.image_size,
                                                    d.num_channels), np.uint8),
                     "label": rng.integers(0, 10, (b,), np.int32)}
            runner = step.lower(state, batch, *extra).compile()
            for _ in range(3):
                state, metrics = runner(state, batch, *extra)
            jax.block_until_ready(metrics)
        compiled[name] = [runner, state, batch, extra, []]
    for _ in range(rounds):
        for name, entry in compiled.items():
            runner, state, batch, extra, times = entry
            start = time.perf_counter()
            for _ in range(steps):
                state, metrics = runner(state, batch, *extra)
            jax.block_until_ready(metrics)
            times.append(steps / (time.perf_counter() - start))
            entry[1] = state
    return {name: float(np.median(entry[4])) for name, entry in compiled.items()}


def measure_lora(args) -> dict:
    svc, accuracy = classifier()
    digit = args.digit
    base_config = load("configs/digits.py")
    lora_config = load(f"configs/digits.py:lora,digit={digit}",
                       {"model.lora.base": args.base})
    before, _ = samples(base_config, args.base, args.samples)
    after, experiment = samples(lora_config, args.run, args.samples)

    def share(pixels):
        predicted = svc.predict(pixels.reshape(len(pixels), -1) / 255.0)
        return float(np.mean(predicted == digit)), np.bincount(predicted, minlength=10).tolist()

    from diffjax.state.train_state import count_params

    adapter = count_params(experiment.spec.abstract.params)
    model = count_params(experiment.frozen.abstract)
    share_before, counts_before = share(before)
    share_after, counts_after = share(after)
    rates = steps_per_second({"full fine-tune": load("configs/digits.py"),
                              "lora": lora_config})
    return {"classifier_test_accuracy": accuracy, "digit": digit, "samples": args.samples,
            "share_before": share_before, "share_after": share_after,
            "predicted_before": counts_before, "predicted_after": counts_after,
            "adapter_params": adapter, "model_params": model,
            "adapter_fraction": adapter / model, "steps_per_sec": rates,
            "lora_vs_full_speed": rates["lora"] / rates["full fine-tune"],
            "state_bytes": {"lora": int(_state_bytes(experiment)),
                            "full": int(_state_bytes(build_experiment(base_config)))}}


def _state_bytes(experiment) -> int:
    from diffjax.state.train_state import state_bytes

    return state_bytes(experiment.spec.abstract)


def measure_controlnet(args) -> dict:
    from diffjax.sampling.controlnet import (condition_errors, make_controlnet_generate_fn,
                                             split_conditions)

    svc, accuracy = classifier()
    config = load(f"configs/digits.py:controlnet={args.condition}",
                  {"model.controlnet_base": args.base})
    base_config = load("configs/digits.py")
    cond, originals, labels = split_conditions(config, args.samples)
    controlled, _ = samples(config, args.run, args.samples, extra=(cond,),
                            generate_fn=make_controlnet_generate_fn)
    plain, _ = samples(base_config, args.base, args.samples)
    shuffled = originals[np.random.default_rng(0).permutation(len(originals))]
    errors = {name: float(np.mean(condition_errors(config, cond, pixels)))
              for name, pixels in (("controlnet", controlled), ("base_without_controlnet", plain),
                                   ("other_real_digits", shuffled), ("source_images",
                                                                     originals))}
    agree = float(np.mean(svc.predict(controlled.reshape(len(controlled), -1) / 255.0)
                          == labels))
    agree_base = float(np.mean(svc.predict(plain.reshape(len(plain), -1) / 255.0) == labels))
    return {"condition": args.condition, "samples": args.samples,
            "condition_mse": errors, "classifier_test_accuracy": accuracy,
            "sample_digit_matches_source_digit": {"controlnet": agree, "base": agree_base}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("lora", "controlnet"))
    parser.add_argument("--base", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--condition", default="outline")
    parser.add_argument("--samples", type=int, default=0)
    args = parser.parse_args()
    args.samples = args.samples or (500 if args.what == "lora" else 180)
    result = measure_lora(args) if args.what == "lora" else measure_controlnet(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
