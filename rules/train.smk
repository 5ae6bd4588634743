# Train the built-in demo models; each run writes a checkpoint folder as a user's training run would.


checkpoint train:
    output:
        directory(layout.checkpoint_folder(OUT, "{model}", "{run}")),
    params:
        spec=lambda wc: spec_arg(jobs.train_spec(config, wc.model, wc.run)),
    log:
        layout.log_file(OUT, "train", "{model}", "{run}"),
    benchmark:
        layout.benchmark_file(OUT, "train", "{model}", "{run}")
    resources:
        mem_mb=2000,
        runtime=30,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} train --spec {params.spec} --out {output:q}"
