//! Which kind of config a `-c` file is. spdk_tgt's `-c` takes SPDK's JSON
//! and ours takes YAML; since YAML reads most JSON too, a JSON config
//! given to the YAML reader would fail with a puzzling "unknown field
//! subsystems". So the format is told from the file itself: a `.json`
//! name, or text whose first character (after comments) opens a JSON
//! object, is SPDK's JSON.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    SpdkJson,
    Yaml,
}

pub fn detect(path: &Path, text: &str) -> Format {
    let json_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let stripped = bdev::config::strip_comments(text);
    if json_name || stripped.trim_start().starts_with('{') {
        Format::SpdkJson
    } else {
        Format::Yaml
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_told_by_its_name_or_its_first_character() {
        let p = Path::new;
        assert_eq!(detect(p("a.json"), "subsystems: []"), Format::SpdkJson);
        assert_eq!(detect(p("a.JSON"), ""), Format::SpdkJson);
        assert_eq!(
            detect(p("saved"), "// saved by spdk\n  {\"subsystems\": []}"),
            Format::SpdkJson
        );
        assert_eq!(detect(p("a.yaml"), "bdevs: []\n"), Format::Yaml);
        // A YAML flow mapping at the top is YAML only by its name.
        assert_eq!(
            detect(p("a.yml"), "# c\nbdevs: [{malloc: {}}]"),
            Format::Yaml
        );
    }
}
