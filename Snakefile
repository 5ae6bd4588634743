# Activation-analysis workflow: train demo models, record activations, analyse, report.
# Run with `snakemake --cores N` (see README.md); all logic lives in the `pipeline` package.

configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/train.smk"
include: "rules/extract.smk"
include: "rules/stats.smk"
include: "rules/similarity.smk"
include: "rules/factorization.smk"
include: "rules/report.smk"


rule all:
    input:
        # named up front: every run trains at once, and the other models' jobs start beside them
        [layout.report_index(REPORT_DIR), layout.report_bundle(OUT)] if MODELS else [],
        trained_run_folders(),
        # and every output, once the runs are trained: one deleted since the last run is made again
        lambda wildcards: every_output(),
    default_target: True
