//! Every recipe in configs/ parses and validates (names, types, allowed values).
use std::path::Path;

#[test]
fn every_recipe_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = dml::config::Config::load(&path, &[]) {
                panic!("{}: {e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 6, "only {n} recipes in {}", dir.display());
}

fn recipe(name: &str) -> dml::config::Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    dml::config::Config::load(&path, &[]).unwrap()
}

#[test]
fn in_shop_recipes_use_the_query_gallery_protocol() {
    for method in ["bfe", "cgd", "dnc", "horde"] {
        let cfg = recipe(&format!("{method}-inshop.toml"));
        assert_eq!(cfg.data.test, "data/inshop/query.dmlds", "{method}");
        assert_eq!(cfg.data.gallery, "data/inshop/gallery.dmlds", "{method}");
    }
}

#[test]
fn bfe_and_cgd_recipes_carry_the_official_step_schedules() {
    use dml::config::LrPolicy;
    use dml::optim::learning_rate;
    for data in ["cub200", "cars196", "sop", "inshop"] {
        // CGD: MultiStepLR ×0.1 at epochs 60 and 80 of 100.
        let cgd = recipe(&format!("cgd-{data}.toml"));
        assert_eq!(cgd.lr.policy, LrPolicy::Multistep);
        assert_eq!(cgd.lr.milestone_epochs, vec![60, 80]);
        assert_eq!(cgd.lr.gamma, 0.1);
        // BFE: adjust_lr(ep) with ep = epoch + 1 and base 1e-4, evaluated per epoch
        // (one step per epoch here): ep // 5 + 1 times the base below ep 50, 1e-3 until
        // 200, 1e-4 until 300, 1e-5 after.
        let mut bfe = recipe(&format!("bfe-{data}.toml"));
        bfe.lr.milestones = std::mem::take(&mut bfe.lr.milestone_epochs);
        for epoch in 0..400 {
            let ep = epoch + 1;
            let want = match ep {
                e if e < 50 => 1e-4 * (e / 5 + 1) as f64,
                e if e < 200 => 1e-3,
                e if e < 300 => 1e-4,
                _ => 1e-5,
            };
            let got = learning_rate(&bfe.lr, bfe.optim.lr, epoch);
            assert!(
                (got - want).abs() <= 1e-15,
                "bfe-{data} epoch {epoch}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn dnc_recipes_follow_the_official_readme_schedule() {
    // README: 200 epochs, --finetune-epoch=190; the code trains the whole embedding
    // from epoch 190·8/19 = 80. Steps per epoch of each recipe's training split.
    for (data, per_epoch) in [
        ("cub200", 73),
        ("cars196", 100),
        ("sop", 744),
        ("inshop", 323),
    ] {
        let cfg = recipe(&format!("dnc-{data}.toml"));
        assert_eq!(cfg.train.steps, 200 * per_epoch, "{data}");
        assert_eq!(cfg.dnc.final_step, 190 * per_epoch, "{data}");
        assert_eq!(cfg.dnc.full_embedding_step, 80 * per_epoch, "{data}");
        assert_eq!(cfg.dnc.recluster_every, 2 * per_epoch, "{data}");
    }
}

#[test]
fn the_launch_scripts_and_the_readme_name_only_configs_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut named = 0;
    for file in [
        "README.md",
        "launch/slurm.sbatch",
        "launch/quickstart.sh",
        "launch/mpirun.sh",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for (at, _) in text.match_indices("configs/") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/-_.<>".contains(*c))
                .collect();
            let name = name.trim_end_matches('.');
            // `configs/bfe-<dataset>.toml` stands for the four dataset recipes.
            if !name.ends_with(".toml") || name.contains('<') {
                continue;
            }
            named += 1;
            assert!(
                root.join(name).is_file(),
                "{file} names {name}, which does not exist"
            );
        }
    }
    assert!(named >= 3, "only {named} config names found");
}
