//! The library's layers: data flows one way (image → tensor → backbone → features → head →
//! metrics / report), with the application layer (weights cache, model, run directory,
//! learner) on top. No module may name one above it.

use std::path::Path;

const LAYERS: &[&[&str]] = &[
    &["error", "device", "io", "tensor", "similar"],
    &["data"],
    &["weights"],
    &["backbones"],
    &["features"],
    &["train"],
    &["inspect", "report"],
    &["cache"],
    &["model", "run"],
    &["learner", "extract", "export"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut violations = Vec::new();
    let mut checked = 0;
    for f in all {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" {
            continue;
        }
        let me =
            rank(&top).unwrap_or_else(|| panic!("{}: module `{top}` has no layer", rel.display()));
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + 7..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let dep = match name.as_str() {
                    // re-exports at the crate root
                    "Backbone" | "ModelSpec" | "Taps" | "models" => "backbones",
                    "Error" | "Result" => "error",
                    "default_device" | "open_device" | "parse_device" | "set_device" => "device",
                    other => other,
                };
                checked += 1;
                match rank(dep) {
                    Some(r) if r > me => violations.push(format!(
                        "{}:{}: `{top}` names `{dep}`, a higher layer",
                        rel.display(),
                        n + 1
                    )),
                    Some(_) => {}
                    None => violations.push(format!(
                        "{}:{}: unknown module `{dep}`",
                        rel.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} references found");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Inside `backbones`, the layers (the burn building blocks) sit below the engine's plan: the
/// plan lowers layers, never the other way round (a process-wide switch once made
/// `layers.rs` depend on `plan.rs`, a cycle).
#[test]
fn the_layers_do_not_depend_on_the_plan() {
    let layers = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backbones/layers.rs"),
    )
    .unwrap();
    let code: String = layers
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for needle in ["plan::", "super::plan", "backbones::plan"] {
        assert!(
            !code.contains(needle),
            "backbones/layers.rs names `{needle}`: the layers must not depend on the plan"
        );
    }
}
