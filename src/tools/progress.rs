//! A progress bar on stderr for long tool runs, drawn only when stderr is a
//! terminal (scripts and CI see nothing), at most ten times a second.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: &'static str,
    enabled: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    pub fn new(label: &'static str) -> Progress {
        Progress {
            label,
            enabled: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    /// Reports `done` of `total`.
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.drawn = true;
        eprint!("\r{}", bar(self.label, done, total));
        let _ = std::io::stderr().flush();
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if self.drawn {
            eprint!("\r{}\r", " ".repeat(self.label.len() + 50));
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `label [#########           ]  45%`
pub fn bar(label: &str, done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let pct = (done.min(total) * 100).checked_div(total).unwrap_or(100) as usize;
    let filled = pct * WIDTH as usize / 100;
    format!(
        "{label} [{}{}] {pct:>3}%",
        "#".repeat(filled),
        " ".repeat(WIDTH as usize - filled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_bar() {
        assert_eq!(bar("x", 0, 10), format!("x [{}]   0%", " ".repeat(30)));
        assert_eq!(
            bar("x", 5, 10),
            format!("x [{}{}]  50%", "#".repeat(15), " ".repeat(15))
        );
        assert_eq!(bar("x", 20, 10), format!("x [{}] 100%", "#".repeat(30)));
        assert_eq!(bar("x", 0, 0), format!("x [{}] 100%", "#".repeat(30)));
    }
}
