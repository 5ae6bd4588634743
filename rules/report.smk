# Offline HTML report: one folder of pages per model, and an index linking them all.


localrules:
    report_model,
    report_index,


rule report_model:
    input:
        trained=trained_folders,
        results=model_results,
    output:
        report(
            directory(layout.model_report(REPORT_DIR, "{model}")),
            htmlindex="index.html",
            category="Models",
            labels={"model": "{model}"},
        ),
    params:
        spec=lambda wc, input: spec_arg(
            {
                "model_name": wc.model,
                "model": config["models"][wc.model],
                "analyses": config["analyses"],
                "output_dir": OUT,
                "inputs": list(input.results),
            }
        ),
    log:
        layout.log_file(OUT, "report", "{model}"),
    benchmark:
        layout.benchmark_file(OUT, "report", "{model}")
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "{PIPELINE} --log {log} --threads {threads} report-model --spec {params.spec:q} --out {output}"


rule report_index:
    input:
        [layout.model_report(REPORT_DIR, m) for m in config["models"]],
    output:
        report(layout.report_index(REPORT_DIR), category="Index"),
    params:
        spec=lambda wc, input: spec_arg({"models": list(config["models"]), "model_reports": list(input)}),
    log:
        layout.log_file(OUT, "report", "index"),
    benchmark:
        layout.benchmark_file(OUT, "report", "index")
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{PIPELINE} --log {log} --threads {threads} report-index --spec {params.spec:q} --out {output}"
