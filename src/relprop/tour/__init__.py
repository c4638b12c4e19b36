"""The tour ``relprop demo`` gives, in three parts: ``showcase`` (heatmaps of the shapes per composite, and the page
that shows all parts), ``shortcut`` (a "Clever Hans" data set explained into a store, and SpRAy finding the
shortcut) and ``correction`` (P-ClArC removing it, verified against the known truth).

The tour drives the tools (LRP, relprop.datasets, relprop.analysis, relprop.correct) over the demo's assets, so it
sits above them; the assets themselves (relprop.demo: the model, the shapes, the watermark variant) sit below every
tool and import none."""
