//! docs/operations.md's commands, run as written: every `sh` block in
//! order, as one bash script, against a daemon started with --empty. A
//! doc command that stops working fails this test.

mod tgt_util;

use std::path::Path;
use std::process::Command;

use tgt_util::Tgt;

/// The `sh` blocks of a Markdown text, in order.
fn sh_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_end()) {
            (None, "```sh") => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(cur.is_none(), "an sh block is not closed");
    blocks
}

#[test]
fn sh_blocks_are_found_in_order() {
    let md = "a\n```sh\none\n```\n```\nnot sh\n```\n```sh\ntwo\nthree\n```\n";
    assert_eq!(sh_blocks(md), ["one\n", "two\nthree\n"]);
}

#[test]
fn the_commands_in_operations_md_work() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let md = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let blocks = sh_blocks(&md);
    assert!(blocks.len() >= 8, "only {} sh blocks", blocks.len());
    let t = Tgt::start("docs-ops", &["--empty", "-m", "0x3"]);
    let work = t.dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_ferrothin")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Each block is announced, so a failure says which one.
    let script: String = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| format!("echo '--- block {}' >&2\n{b}", i + 1))
        .collect();
    let o = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(root)
        .env("SOCK", &t.sock)
        .env("WORK", &work)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docs/operations.md failed ({}):\n{}\n{}\n--- daemon log\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        t.log()
    );
    t.stop();
}
