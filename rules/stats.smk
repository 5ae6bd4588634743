# Activation statistics per checkpoint, and their change across the checkpoints of a run.


rule stats:
    input:
        layout.activation_store(OUT, "{model}", "{run}", "{checkpoint}", "{stimuli}"),
    output:
        result=directory(layout.analysis_result(OUT, "stats", "{model}", "{run}", "{checkpoint}", "{stimuli}")),
        summary=layout.summary_path(layout.analysis_result(OUT, "stats", "{model}", "{run}", "{checkpoint}", "{stimuli}")),
    params:
        spec=spec_arg(jobs.stats_spec(config)),
    log:
        layout.log_file(OUT, "stats", "{model}", "{run}", "{checkpoint}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "stats", "{model}", "{run}", "{checkpoint}", "{stimuli}")
    resources:
        mem_mb=2000,
        runtime=30,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} stats --spec {params.spec} --store {input:q} --out {output.result:q}"


rule stats_across:
    input:
        lambda wc: analysis_results("stats", wc.model, wc.run, wc.stimuli),
    output:
        layout.across_checkpoints(OUT, "stats", "{model}", "{run}", "{stimuli}"),
    params:
        inputs=lambda wc, input: shell_args(list(input)),
    log:
        layout.log_file(OUT, "stats_across", "{model}", "{run}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "stats_across", "{model}", "{run}", "{stimuli}")
    resources:
        mem_mb=1000,
        runtime=10,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} stats-across --out {output:q} {params.inputs}"
