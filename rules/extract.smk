# Record activations of one (model, run, checkpoint, stimulus set) into a Zarr store.


def checkpoint_file(wildcards):
    path = model_checkpoints(wildcards.model, wildcards.run)[wildcards.checkpoint]
    return [] if path is None else [path]


rule extract:
    input:
        checkpoint_file,
    output:
        directory(layout.activation_store(OUT, "{model}", "{run}", "{checkpoint}", "{stimuli}")),
    params:
        spec=lambda wc: spec_arg(jobs.extract_spec(config, wc.model, wc.run, wc.stimuli)),
        checkpoint=lambda wc, input: f"--checkpoint {shlex.quote(input[0])}" if len(input) else "",
    log:
        layout.log_file(OUT, "extract", "{model}", "{run}", "{checkpoint}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "extract", "{model}", "{run}", "{checkpoint}", "{stimuli}")
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=GPU,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} extract --spec {params.spec:q} --out {output:q} {params.checkpoint}"
