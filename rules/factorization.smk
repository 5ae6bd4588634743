# Tensor component analysis per checkpoint (sequence stimuli) and across the checkpoints of a run,
# and the dynamic functional connectome (communities of co-active units over training).


rule tca:
    input:
        layout.activation_store(OUT, "{model}", "{run}", "{checkpoint}", "{stimuli}"),
    output:
        result=directory(layout.analysis_result(OUT, "tca", "{model}", "{run}", "{checkpoint}", "{stimuli}")),
        summary=layout.summary_path(layout.analysis_result(OUT, "tca", "{model}", "{run}", "{checkpoint}", "{stimuli}")),
    params:
        spec=spec_arg(jobs.tca_spec(config)),
    log:
        layout.log_file(OUT, "tca", "{model}", "{run}", "{checkpoint}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "tca", "{model}", "{run}", "{checkpoint}", "{stimuli}")
    resources:
        mem_mb=3000,
        runtime=30,
        gpu=GPU,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} tca --spec {params.spec} --store {input:q} --out {output.result:q}"


rule tca_across:
    input:
        lambda wc: run_stores(wc.model, wc.run, wc.stimuli),
    output:
        result=directory(layout.across_result(OUT, "tca-across", "{model}", "{run}", "{stimuli}")),
        summary=layout.across_checkpoints(OUT, "tca-across", "{model}", "{run}", "{stimuli}"),
    params:
        spec=spec_arg(jobs.tca_spec(config, across=True)),
        inputs=lambda wc, input: shell_args(list(input)),
    log:
        layout.log_file(OUT, "tca_across", "{model}", "{run}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "tca_across", "{model}", "{run}", "{stimuli}")
    resources:
        mem_mb=3000,
        runtime=30,
        gpu=GPU,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} tca-across --spec {params.spec} --out {output.result:q} {params.inputs}"


rule connectome:
    input:
        lambda wc: run_stores(wc.model, wc.run, wc.stimuli),
    output:
        result=directory(layout.across_result(OUT, "connectome", "{model}", "{run}", "{stimuli}")),
        summary=layout.across_checkpoints(OUT, "connectome", "{model}", "{run}", "{stimuli}"),
    params:
        spec=spec_arg(jobs.connectome_spec(config)),
        inputs=lambda wc, input: shell_args(list(input)),
    log:
        layout.log_file(OUT, "connectome", "{model}", "{run}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "connectome", "{model}", "{run}", "{stimuli}")
    resources:
        mem_mb=3000,
        runtime=30,
        gpu=GPU,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} connectome --spec {params.spec} --out {output.result:q} {params.inputs}"
