"""NAC-UE's gradient quantities in pytorch-ood's convention (utils/nac.py): per tapped channel the spatial mean of
``z * dKL/dz``, of every tap or of those ``--nac-taps`` names. When no other producer's pass makes the features,
they come from NAC's own forward pass (``fuses``)."""
import numpy as np

from ..extraction import extract_with_nac
from ..io import load_array
from ..nac import nac_values, select_taps
from ..paths import NAC
from .base import Producer, register_producer

NAC_VERSION = 1   # what nac.npy holds (utils/nac.py); a change means the sets are recomputed


@register_producer
class NacProducer(Producer):
    name = "nac"
    help = ("also store NAC-UE's per-channel z * dKL/dz of every tap, for every set (Liu et al. 2024; a backward pass "
            "per batch, about 3x the forward cost)")
    fuses = True

    def add_args(self, parser):
        super().add_args(parser)
        parser.add_argument("--nac-taps", default=None, metavar="SPEC",
                            help="NAC-UE on some taps only (implies --nac): comma-separated indices, tap names or "
                                 "start:stop ranges, e.g. 'trans1.conv1:' (default: all); the backward pass stops at "
                                 "the earliest")

    def options(self, args):
        taps = getattr(args, "nac_taps", None)
        return {"taps": taps} if (getattr(args, "nac", False) or taps is not None) else None

    def settings(self, model, options, seed):
        out = {"nac": True, "nac_version": NAC_VERSION}
        chosen = select_taps(options.get("taps"), model.tap_names)
        if len(chosen) < model.num_taps:   # absent: every tap, as every run before the option existed
            out["nac_taps"] = chosen
        return out

    def compute(self, ctx, images, labels, out, fused):
        taps = select_taps(ctx.options.get("taps"), ctx.model.tap_names)
        if fused:   # the features from NAC's own forward pass
            values = extract_with_nac(ctx.model, images, out, ctx.device, ctx.batch_size,
                                      desc=f"{ctx.name} (features + NAC)", taps=taps)
        else:
            values = nac_values(ctx.model, images, ctx.device, ctx.batch_size, progress=f"{ctx.name} NAC", taps=taps)
        np.save(out / NAC, values)

    def load(self, d, manifest, out, rebuild):
        if (d / NAC).exists():
            taps = manifest["settings"].get("nac_taps", range(len(manifest["widths"])))
            out["nac"], out["nac_taps"] = load_array(d / NAC, rebuild, mmap=True), list(taps)
            out["nac_widths"] = [manifest["widths"][i] for i in taps]

    def available(self, train, sets):
        return bool(sets) and all("nac" in f for f in [train, *sets.values()])
