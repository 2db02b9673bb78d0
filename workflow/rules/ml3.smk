# ML3 (evomal.methods.ml3, docs/methods.md): a neural loss meta-learned by EvoMAL's unrolled local
# search, in one job that writes the experiment's best/loss.json (no generations). The rule matches only
# experiments whose method runs the meta_train stage group; ruleorder makes it win over the GP `best`.


ruleorder: ml3_meta_train > best


rule ml3_meta_train:
    output:
        f"{EXP_DIR}/best/loss.json",
    log:
        f"{LOGS}/ml3_meta_train.log",
    wildcard_constraints:
        experiment=experiments_running("meta_train"),
    priority: SEARCH_PRIORITY
    threads: 1
    resources:
        runtime=240,
    params:
        local_search=lambda w: exp_of(w)["local_search"],
        training=lambda w: exp_of(w)["training"],
        task=lambda w: [exp_of(w)["dataset"], exp_of(w)["model"], exp_of(w)["seed"]],
    run:
        from evomal.pipeline.ml3 import meta_train_stage

        meta_train_stage(output[0], exp=exp_of(wildcards), device=CFG["device"], log=log[0], threads=threads)
