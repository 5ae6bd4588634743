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
        lambda wildcards: every_output(),
    default_target: True
