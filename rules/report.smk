# Offline HTML report: a page per checkpoint and per model, the comparisons between models, an index.
# A model page assembles what each run's job drew of that run's across-checkpoint results, so a new
# checkpoint re-draws only its own run.

import re


localrules:
    report_checkpoint,
    report_run,
    report_model,
    report_comparisons,
    report_index,
    report_bundle,


rule report_checkpoint:
    input:
        checkpoint_results,
    output:
        page=layout.checkpoint_page(layout.model_page(REPORT_DIR, "{model}").parent, "{run}", "{checkpoint}", "{stimuli}"),
        errors=layout.checkpoint_summary(
            layout.checkpoint_page(layout.model_page(REPORT_DIR, "{model}").parent, "{run}", "{checkpoint}", "{stimuli}")
        ),
    params:
        spec=lambda wc, input: spec_arg(report_spec(wc.model, input)),
    log:
        layout.log_file(OUT, "report", "{model}", "{run}", "{stimuli}", "{checkpoint}"),
    benchmark:
        layout.benchmark_file(OUT, "report", "{model}", "{run}", "{stimuli}", "{checkpoint}")
    resources:
        mem_mb=2000,
        runtime=10,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} report-checkpoint --spec {params.spec} --out {output.page:q}"


rule report_run:
    input:
        lambda wc: run_across_results(wc.model, wc.run, wc.stimuli),
    output:
        layout.run_report(OUT, "{model}", "{run}", "{stimuli}"),
    params:
        spec=lambda wc, input: spec_arg({**report_spec(wc.model, input), "run": wc.run, "stimuli": wc.stimuli}),
    log:
        layout.log_file(OUT, "report-run", "{model}", "{run}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "report-run", "{model}", "{run}", "{stimuli}")
    resources:
        mem_mb=2000,
        runtime=10,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} report-run --spec {params.spec} --out {output:q}"


rule report_model:
    wildcard_constraints:
        model="|".join(re.escape(name) for name in MODELS),  # not the comparisons page's folder
    input:
        trained=lambda wc: trained_folders(wc.model),
        results=lambda wc: model_results(wc.model),
        pages=lambda wc: checkpoint_pages(wc.model),
    output:
        page=layout.model_page(REPORT_DIR, "{model}"),
        summary=layout.model_summary(REPORT_DIR, "{model}"),
    params:
        spec=lambda wc, input: spec_arg(report_spec(wc.model, input.results)),
    log:
        layout.log_file(OUT, "report", "{model}"),
    benchmark:
        layout.benchmark_file(OUT, "report", "{model}")
    resources:
        mem_mb=2000,
        runtime=20,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} report-model --spec {params.spec} --out {output.page:q}"


rule report_comparisons:
    input:
        comparison_results(),
    output:
        page=layout.comparisons_report(REPORT_DIR),
        summary=layout.comparisons_summary(REPORT_DIR),
    params:
        spec=lambda wc, input: spec_arg({"analyses": config["analyses"], "inputs": list(input)}),
    log:
        layout.log_file(OUT, "report", "comparisons"),
    benchmark:
        layout.benchmark_file(OUT, "report", "comparisons")
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} report-comparisons --spec {params.spec} --out {output.page:q}"


rule report_index:
    input:
        models=[layout.model_summary(REPORT_DIR, m) for m in MODELS],
        comparisons=layout.comparisons_summary(REPORT_DIR),
    output:
        layout.report_index(REPORT_DIR),
    params:
        spec=lambda wc, input: spec_arg(
            {
                "models": MODELS,
                "waiting": WAITING,
                "model_summaries": list(input.models),
                "comparisons_summary": input.comparisons,
            }
        ),
    log:
        layout.log_file(OUT, "report", "index"),
    benchmark:
        layout.benchmark_file(OUT, "report", "index")
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} report-index --spec {params.spec} --out {output:q}"


# `snakemake --report report.zip` packs this folder with the index as its entry page; the pages keep
# their relative paths there, so the links between them work inside the unpacked zip.
rule report_bundle:
    input:
        index=layout.report_index(REPORT_DIR),
        pages=lambda wc: report_pages(),
    output:
        report(directory(layout.report_bundle(OUT)), htmlindex="index.html", category="Report"),
    params:
        pages=lambda wc, input: shell_args(input),
        report_dir=REPORT_DIR,
    log:
        layout.log_file(OUT, "report", "bundle"),
    benchmark:
        layout.benchmark_file(OUT, "report", "bundle")
    resources:
        mem_mb=500,
        runtime=10,
    shell:
        "{PIPELINE} --log {log:q} report-bundle --report-dir {params.report_dir:q} --out {output:q} {params.pages}"
