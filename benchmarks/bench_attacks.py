"""Benchmark PGD implementations on one model, batch and setting (image-steps per second).

Compares: our compiled PGD (cxrtransfer.attacks.iterative.make_attack), the same with XLA, an eager
per-step GradientTape loop, ART's ProjectedGradientDescent, and the bound: one forward+backward
pass w.r.t. the input in a tf.function, timed per step. Optionally the compiled PGD and the bound
under a Keras mixed-precision policy.

Also (unless --no-transfer) the transfer attacks at the papers' settings and the same steps, eps
and step as PGD, in the same round-robin: TI-FGSM (--ti-kernel), SI-NI-FGSM (momentum 1,
Nesterov, --si-scales copies) and VMI-FGSM (momentum 1, --vmi-samples neighbours, --vmi-bound),
reported as cost per image relative to PGD. Expected: TI ~1x, SI with m scales ~m x, VMI with
N samples ~(N + 1) x (their loss gradients per step).

    .venv/bin/python benchmarks/bench_attacks.py --image-size 64 --batch 16 --steps 5 --json out.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="ResNet50", help="keras.applications backbone")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    p.add_argument("--eps", type=float, default=8.0, help="1/255 units (step = eps/4)")
    p.add_argument("--no-xla", action="store_true", help="skip the jit_compile=True variant")
    p.add_argument("--no-art", action="store_true", help="skip ART")
    p.add_argument("--no-mixed", action="store_true", help="skip the mixed-precision variant")
    p.add_argument("--mixed-policy", default="mixed_bfloat16", help="Keras dtype policy to try")
    p.add_argument("--no-transfer", action="store_true", help="skip TI, SI-NI and VMI")
    p.add_argument("--ti-kernel", type=int, default=7, help="TI kernel (paper 15 at 299 px)")
    p.add_argument("--si-scales", type=int, default=5, help="SI copies m (paper 5)")
    p.add_argument("--vmi-samples", type=int, default=20, help="VMI neighbours N (paper 20)")
    p.add_argument("--vmi-bound", type=float, default=1.5, help="VMI beta (paper 1.5)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def run_interleaved(methods: dict, repeats: int, n_images_steps: int) -> dict:
    """Warm up every method once (tracing/compilation), then time them round-robin.

    Interleaving spreads any background load evenly over the methods, so ratios stay fair on a
    shared machine.
    """
    res = {}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        out = fn()
        res[name] = {"warmup_s": time.perf_counter() - t0, "times_s": [], "_out": out}
        print(f"  warm-up {name}: {res[name]['warmup_s']:.1f}s", flush=True)
    for r in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            res[name]["times_s"].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{repeats} done", flush=True)
    for v in res.values():
        rates = [n_images_steps / t for t in v["times_s"]]
        v.update(median=statistics.median(rates), min=min(rates), max=max(rates))
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras
    import tensorflow as tf
    from cxrtransfer.attacks.iterative import make_attack
    from cxrtransfer.attacks.spec import AttackSpec
    from cxrtransfer.attacks.steps import cross_entropy
    from cxrtransfer.models.build import build_model

    n, s, steps = args.batch, args.image_size, args.steps
    spec = AttackSpec("pgd", "linf", eps=args.eps, step=args.eps / 4, steps=steps)
    eps, step = spec.eps / 255, spec.step / 255
    rng = np.random.default_rng(0)
    x_np = rng.uniform(0, 1, size=(n, s, s, 1)).astype(np.float32)
    y_np = rng.integers(0, 2, size=n).astype(np.int32)
    x, y = tf.constant(x_np), tf.constant(y_np)

    def build(policy=None):
        if policy:
            keras.mixed_precision.set_global_policy(policy)
        try:
            return build_model(args.arch, s, pretrained="none", seed=0)
        finally:
            keras.mixed_precision.set_global_policy("float32")

    model = build()
    methods = {}
    print(f"{args.arch} {s}x{s}, batch {n}, {steps} PGD steps, {args.repeats} repeats", flush=True)

    # (a) ours, compiled loop; (b) the same with XLA
    ours = make_attack(model, spec)
    methods["ours"] = lambda: ours(x, y).numpy()
    if not args.no_xla:
        ours_xla = make_attack(model, spec, jit_compile=True)
        methods["ours_xla"] = lambda: ours_xla(x, y).numpy()

    # (a') the transfer attacks, same eps / step / steps as PGD
    transfer = {}
    if not args.no_transfer:
        base = dict(method="pgd", norm="linf", eps=spec.eps, step=spec.step, steps=steps)
        transfer = {
            "ti": AttackSpec(**base, ti_kernel=args.ti_kernel),
            "si_ni": AttackSpec(**base, momentum=1.0, nesterov=True, scales=args.si_scales),
            "vmi": AttackSpec(
                **base,
                momentum=1.0,
                variance_samples=args.vmi_samples,
                variance_bound=args.vmi_bound,
            ),
        }

        def timed(fn):
            def call():
                fn(x, y).numpy()  # returns None: outputs differ from PGD's by design

            return call

        for name, tspec in transfer.items():
            methods[name] = timed(make_attack(model, tspec))

    # (c) eager per-step loop
    def eager():
        x_adv = x
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = tf.reduce_sum(cross_entropy(y, model(x_adv, training=False)))
            g = tape.gradient(loss, x_adv)
            x_adv = tf.clip_by_value(
                x + tf.clip_by_value(x_adv + step * tf.sign(g) - x, -eps, eps), 0, 1
            )
        return x_adv.numpy()

    methods["eager"] = eager

    # (d) ART
    if not args.no_art:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import TensorFlowV2Classifier

        def loss_object(y_onehot, probs):
            return tf.reduce_sum(cross_entropy(tf.argmax(y_onehot, axis=1), probs))

        clf = TensorFlowV2Classifier(
            model=model,
            nb_classes=2,
            input_shape=(s, s, 1),
            loss_object=loss_object,
            clip_values=(0.0, 1.0),
        )
        pgd = ProjectedGradientDescent(
            clf,
            norm=np.inf,
            eps=eps,
            eps_step=step,
            max_iter=steps,
            num_random_init=0,
            batch_size=n,
            verbose=False,
        )
        y_onehot = np.eye(2, dtype=np.float32)[y_np]
        methods["art"] = lambda: pgd.generate(x_np, y=y_onehot)

    # (e) bound: forward + backward w.r.t. the input, one tf.function call per step
    def make_bound(m):
        @tf.function
        def grad(xx, yy):
            with tf.GradientTape() as tape:
                tape.watch(xx)
                loss = tf.reduce_sum(cross_entropy(yy, m(xx, training=False)))
            return tape.gradient(loss, xx)

        def run():
            for _ in range(steps):
                g = grad(x, y)
            g.numpy()

        return run

    methods["bound"] = make_bound(model)

    # Mixed precision: the compiled loop and its bound under a Keras dtype policy
    if not args.no_mixed:
        try:
            mp = build(args.mixed_policy)
            ours_mp = make_attack(mp, spec)
            methods[f"ours_{args.mixed_policy}"] = lambda: ours_mp(x, y).numpy()
            methods[f"bound_{args.mixed_policy}"] = make_bound(mp)
        except Exception as e:  # noqa: BLE001 - report and carry on
            print(f"  mixed precision ({args.mixed_policy}) failed: {type(e).__name__}: {e}")

    results = run_interleaved(methods, args.repeats, n * steps)
    ref_out = results["ours"]["_out"]
    for r in results.values():
        out = r.pop("_out")
        if out is not None:
            r["max_diff_vs_ours_255"] = float(np.abs(np.asarray(out) - ref_out).max() * 255)
    ref = results["ours"]["median"]
    ratios = {
        "ours/eager": ref / results["eager"]["median"],
        "ours/bound": ref / results["bound"]["median"],
    }
    if "art" in results:
        ratios["ours/art"] = ref / results["art"]["median"]
    if "ours_xla" in results:
        ratios["ours_xla/ours"] = results["ours_xla"]["median"] / ref
    mp_name = f"ours_{args.mixed_policy}"
    if mp_name in results:
        ratios[f"{mp_name}/ours"] = results[mp_name]["median"] / ref
    transfer_rows = []
    for name, tspec in transfer.items():
        cost = ref / results[name]["median"]  # time per image relative to PGD, equal steps
        expected = tspec.gradients_per_step
        ratios[f"cost_{name}/pgd"] = cost
        transfer_rows.append((name, tspec, cost, expected))
        results[name]["gradients_per_step"] = expected

    print()
    print(
        f"PGD L-inf, {args.arch} {s}x{s}, batch {n}, {steps} steps, median of {args.repeats} "
        f"repeats after a warm-up; TF {tf.__version__}, Keras {keras.__version__}, "
        f"{os.cpu_count()} CPU cores"
    )
    print()
    print(
        "| method | image-steps/s (median) | min-max | spread % | warm-up s "
        "| vs ours | max abs diff vs ours (1/255) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        spread = 100 * (r["max"] - r["min"]) / r["median"]
        diff = r.get("max_diff_vs_ours_255") if name != "ours" else None
        print(
            f"| {name} | {r['median']:.1f} | {r['min']:.1f}-{r['max']:.1f} | {spread:.1f} "
            f"| {r['warmup_s']:.1f} | {r['median'] / ref:.2f} "
            f"| {'' if diff is None else f'{diff:.3g}'} |"
        )
    print()
    targets = {"ours/eager": 3.0, "ours/art": 1.0, "ours/bound": 0.9}
    for k, v in ratios.items():
        t = targets.get(k)
        verdict = "" if t is None else f" (target >= {t:g}: {'met' if v >= t else 'NOT met'})"
        print(f"- {k} = {v:.2f}{verdict}")
    pgd_names = [k for k in results if k not in transfer and not k.startswith("bound")]
    best = max(pgd_names, key=lambda k: results[k]["median"])
    print(f"- fastest PGD variant on this machine: {best}")
    if transfer_rows:
        print()
        print(f"Transfer attacks against PGD (ours), {steps} steps each, eps {spec.eps:g}/255:")
        print()
        print(
            "| attack | settings | gradients per step | image-steps/s (median) "
            "| cost per image vs PGD | expected (gradients) | cost / expected |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        settings = {
            "ti": f"ti_kernel {args.ti_kernel}",
            "si_ni": f"momentum 1, nesterov, scales {args.si_scales}",
            "vmi": f"momentum 1, variance_samples {args.vmi_samples}, "
            f"variance_bound {args.vmi_bound:g}",
        }
        print(f"| pgd (ours) | - | 1 | {ref:.1f} | 1.00 | 1 | 1.00 |")
        for name, _, cost, expected in transfer_rows:
            print(
                f"| {name} | {settings[name]} | {expected} | {results[name]['median']:.1f} "
                f"| {cost:.2f} | {expected} | {cost / expected:.2f} |"
            )

    if args.json:
        from cxrtransfer.core.files import write_json

        write_json(
            args.json,
            {
                "settings": vars(args),
                "platform": platform.platform(),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "results": results,
                "ratios": ratios,
                "transfer_specs": {k: v.attrs() for k, v in transfer.items()},
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
