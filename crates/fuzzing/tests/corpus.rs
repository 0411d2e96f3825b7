//! Replays every committed corpus and regression input through its fuzz target.

use std::path::PathBuf;

#[test]
fn the_committed_corpus_runs_clean() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, target) in valkey_dr_fuzzing::TARGETS {
        let mut inputs = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).unwrap();
                target(&data);
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no corpus for the {name} target");
        println!("{name}: {inputs} inputs");
    }
}
