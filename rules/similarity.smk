# Representational similarity: between the sites of a checkpoint, across the checkpoints of a run,
# and across models on a shared stimulus set (final checkpoints).


rule similarity:
    input:
        layout.activation_store(OUT, "{model}", "{run}", "{checkpoint}", "{stimuli}"),
    output:
        result=directory(layout.analysis_result(OUT, "similarity", "{model}", "{run}", "{checkpoint}", "{stimuli}")),
        summary=layout.summary_path(
            layout.analysis_result(OUT, "similarity", "{model}", "{run}", "{checkpoint}", "{stimuli}")
        ),
    params:
        spec=spec_arg(jobs.similarity_spec(config)),
    log:
        layout.log_file(OUT, "similarity", "{model}", "{run}", "{checkpoint}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "similarity", "{model}", "{run}", "{checkpoint}", "{stimuli}")
    resources:
        mem_mb=3000,
        runtime=30,
        gpu=GPU,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} similarity --spec {params.spec} --store {input:q} "
        "--out {output.result:q}"


rule similarity_across:
    input:
        lambda wc: analysis_results("similarity", wc.model, wc.run, wc.stimuli),
    output:
        layout.across_checkpoints(OUT, "similarity", "{model}", "{run}", "{stimuli}"),
    params:
        spec=spec_arg(jobs.similarity_spec(config)),
        inputs=lambda wc, input: shell_args(list(input)),
    log:
        layout.log_file(OUT, "similarity_across", "{model}", "{run}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "similarity_across", "{model}", "{run}", "{stimuli}")
    resources:
        mem_mb=2000,
        runtime=20,
        gpu=GPU,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} similarity-across --spec {params.spec} --out {output:q} {params.inputs}"


rule similarity_models:
    input:
        lambda wc: final_similarity_results(wc.stimuli),
    output:
        result=directory(layout.comparison_result(OUT, "similarity", "{stimuli}")),
        summary=layout.summary_path(layout.comparison_result(OUT, "similarity", "{stimuli}")),
    params:
        spec=spec_arg(jobs.similarity_spec(config)),
        inputs=lambda wc, input: shell_args(list(input)),
    log:
        layout.log_file(OUT, "similarity_models", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "similarity_models", "{stimuli}")
    resources:
        mem_mb=3000,
        runtime=20,
        gpu=GPU,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} similarity-models --spec {params.spec} "
        "--out {output.result:q} {params.inputs}"
