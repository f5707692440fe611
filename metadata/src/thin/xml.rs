//! The thin_dump / thin_restore XML format. We write the flat form (every
//! device's mappings spelled out, which both tools versions read) and read
//! both the flat form and 1.x's shared `<def>` / `<ref>` runs.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::pdata::values::{BlockTime, DeviceDetails};
use crate::thin::model::{Device, PoolModel};
use crate::MetadataError;

/// Formats `m` as thin_dump does (flat form).
pub fn write_xml(m: &PoolModel) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<superblock uuid=\"\" time=\"{}\" transaction=\"{}\" flags=\"{}\" version=\"2\" data_block_size=\"{}\" nr_data_blocks=\"{}\">",
        m.time, m.trans_id, m.flags, m.data_block_size, m.nr_data_blocks
    );
    for (id, d) in &m.devices {
        let dd = &d.details;
        let _ = writeln!(
            s,
            "  <device dev_id=\"{id}\" mapped_blocks=\"{}\" transaction=\"{}\" creation_time=\"{}\" snap_time=\"{}\">",
            dd.mapped_blocks, dd.transaction_id, dd.creation_time, dd.snapshotted_time
        );
        for (v, d0, t, len) in runs(&d.mappings) {
            if len == 1 {
                let _ = writeln!(
                    s,
                    "    <single_mapping origin_block=\"{v}\" data_block=\"{d0}\" time=\"{t}\"/>"
                );
            } else {
                let _ = writeln!(
                    s,
                    "    <range_mapping origin_begin=\"{v}\" data_begin=\"{d0}\" length=\"{len}\" time=\"{t}\"/>"
                );
            }
        }
        s.push_str("  </device>\n");
    }
    s.push_str("</superblock>\n");
    s
}

/// Groups mappings into runs: consecutive virtual and data blocks with
/// one time. Yields (virtual start, data start, time, length).
pub fn runs(mappings: &BTreeMap<u64, BlockTime>) -> Vec<(u64, u64, u32, u64)> {
    let mut out: Vec<(u64, u64, u32, u64)> = Vec::new();
    for (&v, bt) in mappings {
        if let Some(last) = out.last_mut() {
            if v == last.0 + last.3 && bt.block == last.1 + last.3 && bt.time == last.2 {
                last.3 += 1;
                continue;
            }
        }
        out.push((v, bt.block, bt.time, 1));
    }
    out
}

/// Attributes as they stand in the input; a value is copied only when it
/// has entities to unescape.
type AttrList<'a> = Vec<(&'a str, Cow<'a, str>)>;

enum Tag<'a> {
    Open(&'a str, AttrList<'a>),
    Empty(&'a str, AttrList<'a>),
    Close(&'a str),
}

struct Lexer<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Lexer<'a> {
    fn line(&self) -> usize {
        self.s[..self.at.min(self.s.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&self, what: impl std::fmt::Display) -> MetadataError {
        MetadataError::Invalid(format!("xml line {}: {what}", self.line()))
    }

    /// The next tag, skipping text, comments and declarations.
    fn next(&mut self) -> Result<Option<Tag<'a>>, MetadataError> {
        loop {
            let Some(off) = self.s[self.at..].find('<') else {
                self.at = self.s.len();
                return Ok(None);
            };
            self.at += off;
            let rest: &'a str = &self.s[self.at..];
            if rest.starts_with("<!--") {
                let end = rest
                    .find("-->")
                    .ok_or_else(|| self.err("unterminated comment"))?;
                self.at += end + 3;
                continue;
            }
            if rest.starts_with("<?") || rest.starts_with("<!") {
                let end = rest
                    .find('>')
                    .ok_or_else(|| self.err("unterminated declaration"))?;
                self.at += end + 1;
                continue;
            }
            let end = rest.find('>').ok_or_else(|| self.err("unterminated tag"))?;
            let body = &rest[1..end];
            self.at += end + 1;
            if let Some(name) = body.strip_prefix('/') {
                return Ok(Some(Tag::Close(name.trim())));
            }
            let (body, empty) = match body.strip_suffix('/') {
                Some(b) => (b, true),
                None => (body, false),
            };
            let body = body.trim();
            let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
            let name = &body[..name_end];
            if name.is_empty() {
                return Err(self.err("a tag without a name"));
            }
            let attrs = self.attrs(&body[name_end..])?;
            return Ok(Some(if empty {
                Tag::Empty(name, attrs)
            } else {
                Tag::Open(name, attrs)
            }));
        }
    }

    fn attrs(&self, mut s: &'a str) -> Result<AttrList<'a>, MetadataError> {
        let mut out = Vec::new();
        loop {
            s = s.trim_start();
            if s.is_empty() {
                return Ok(out);
            }
            let eq = s
                .find('=')
                .ok_or_else(|| self.err("an attribute without a value"))?;
            let key = s[..eq].trim();
            let rest = s[eq + 1..].trim_start();
            let q = rest
                .chars()
                .next()
                .filter(|c| *c == '"' || *c == '\'')
                .ok_or_else(|| self.err("an unquoted attribute"))?;
            let close = rest[1..]
                .find(q)
                .ok_or_else(|| self.err("an unterminated attribute"))?;
            let raw = &rest[1..1 + close];
            // Numbers never need unescaping: only touch values that do.
            let value = if raw.contains('&') {
                Cow::Owned(
                    raw.replace("&quot;", "\"")
                        .replace("&apos;", "'")
                        .replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&amp;", "&"),
                )
            } else {
                Cow::Borrowed(raw)
            };
            out.push((key, value));
            s = &rest[close + 2..];
        }
    }
}

struct Attrs<'l, 'a> {
    lx: &'l Lexer<'a>,
    tag: &'a str,
    list: AttrList<'a>,
}

impl Attrs<'_, '_> {
    fn new<'l, 'a>(
        lx: &'l Lexer<'a>,
        tag: &'a str,
        list: AttrList<'a>,
        allowed: &[&str],
    ) -> Result<Attrs<'l, 'a>, MetadataError> {
        if let Some((k, _)) = list.iter().find(|(k, _)| !allowed.contains(k)) {
            return Err(lx.err(format!("unknown attribute {k:?} on <{tag}>")));
        }
        Ok(Attrs { lx, tag, list })
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.list
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_ref())
    }

    fn num<T: std::str::FromStr>(&self, k: &str) -> Result<T, MetadataError> {
        let v = self
            .get(k)
            .ok_or_else(|| self.lx.err(format!("<{}> needs {k}", self.tag)))?;
        v.trim().parse().map_err(|_| {
            self.lx
                .err(format!("<{}> {k}={v:?} is not a valid number", self.tag))
        })
    }

    fn opt_num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T, MetadataError> {
        match self.get(k) {
            None => Ok(default),
            Some(_) => self.num(k),
        }
    }
}

/// Mappings of one `<device>` or `<def>` in order.
fn add_mapping(
    lx: &Lexer<'_>,
    out: &mut Vec<(u64, BlockTime)>,
    v: u64,
    bt: BlockTime,
) -> Result<(), MetadataError> {
    if out.last().is_some_and(|(last, _)| *last >= v) {
        return Err(lx.err(format!("mappings out of order at virtual block {v}")));
    }
    out.push((v, bt));
    Ok(())
}

fn mapping(
    lx: &Lexer<'_>,
    name: &str,
    attrs: AttrList<'_>,
    out: &mut Vec<(u64, BlockTime)>,
) -> Result<(), MetadataError> {
    match name {
        "single_mapping" => {
            let a = Attrs::new(lx, name, attrs, &["origin_block", "data_block", "time"])?;
            add_mapping(
                lx,
                out,
                a.num("origin_block")?,
                BlockTime {
                    block: a.num("data_block")?,
                    time: a.num("time")?,
                },
            )
        }
        "range_mapping" => {
            let a = Attrs::new(
                lx,
                name,
                attrs,
                &["origin_begin", "data_begin", "length", "time"],
            )?;
            let (v0, d0, len, time): (u64, u64, u64, u32) = (
                a.num("origin_begin")?,
                a.num("data_begin")?,
                a.num("length")?,
                a.num("time")?,
            );
            if len == 0
                || v0.checked_add(len).is_none()
                || d0.checked_add(len).is_none()
                || len > 1 << 40
            {
                return Err(lx.err(format!("range_mapping of length {len} is invalid")));
            }
            for i in 0..len {
                add_mapping(
                    lx,
                    out,
                    v0 + i,
                    BlockTime {
                        block: d0 + i,
                        time,
                    },
                )?;
            }
            Ok(())
        }
        other => Err(lx.err(format!("unexpected <{other}>"))),
    }
}

/// Parses thin_dump XML (flat, or with 1.x `<def>`/`<ref>`).
pub fn parse_xml(text: &str) -> Result<PoolModel, MetadataError> {
    parse_xml_with_progress(text, &mut |_, _| {})
}

/// As `parse_xml`, reporting (bytes read, total) as it goes.
pub fn parse_xml_with_progress(
    text: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PoolModel, MetadataError> {
    let mut lx = Lexer { s: text, at: 0 };
    let total = text.len() as u64;
    let mut m = match lx.next()? {
        Some(Tag::Open(n, attrs)) if n == "superblock" => {
            let allowed = [
                "uuid",
                "time",
                "transaction",
                "flags",
                "version",
                "data_block_size",
                "nr_data_blocks",
                "metadata_snap",
            ];
            let a = Attrs::new(&lx, n, attrs, &allowed)?;
            if a.get("uuid").is_none() {
                return Err(lx.err("<superblock> needs uuid"));
            }
            PoolModel {
                flags: a.opt_num("flags", 0)?,
                time: a.num("time")?,
                trans_id: a.num("transaction")?,
                data_block_size: a.num("data_block_size")?,
                nr_data_blocks: a.num("nr_data_blocks")?,
                devices: BTreeMap::new(),
            }
        }
        _ => return Err(lx.err("expected <superblock>")),
    };
    let mut defs: HashMap<String, Vec<(u64, BlockTime)>> = HashMap::new();
    loop {
        match lx.next()? {
            Some(Tag::Close("superblock")) => break,
            Some(Tag::Open(n, attrs)) if n == "def" => {
                let a = Attrs::new(&lx, n, attrs, &["name"])?;
                let name = a
                    .get("name")
                    .ok_or_else(|| lx.err("<def> needs name"))?
                    .to_string();
                let mut maps = Vec::new();
                loop {
                    match lx.next()? {
                        Some(Tag::Close("def")) => break,
                        Some(Tag::Empty(t, attrs)) => mapping(&lx, t, attrs, &mut maps)?,
                        _ => return Err(lx.err("unexpected element in <def>")),
                    }
                }
                defs.insert(name, maps);
            }
            Some(Tag::Open(n, attrs)) if n == "device" => {
                progress(lx.at as u64, total);
                let a = Attrs::new(
                    &lx,
                    n,
                    attrs,
                    &[
                        "dev_id",
                        "mapped_blocks",
                        "transaction",
                        "creation_time",
                        "snap_time",
                    ],
                )?;
                let id: u64 = a.num("dev_id")?;
                let details = DeviceDetails {
                    mapped_blocks: a.num("mapped_blocks")?,
                    transaction_id: a.num("transaction")?,
                    creation_time: a.num("creation_time")?,
                    snapshotted_time: a.num("snap_time")?,
                };
                let mut maps = Vec::new();
                loop {
                    match lx.next()? {
                        Some(Tag::Close("device")) => break,
                        Some(Tag::Empty(t, attrs)) if t == "ref" => {
                            let a = Attrs::new(&lx, t, attrs, &["name"])?;
                            let name = a.get("name").unwrap_or_default();
                            let def = defs.get(name).ok_or_else(|| {
                                lx.err(format!("<ref name={name:?}> before its <def>"))
                            })?;
                            for (v, bt) in def.clone() {
                                add_mapping(&lx, &mut maps, v, bt)?;
                            }
                        }
                        Some(Tag::Empty(t, attrs)) => mapping(&lx, t, attrs, &mut maps)?,
                        _ => return Err(lx.err("unexpected element in <device>")),
                    }
                }
                if m.devices
                    .last_key_value()
                    .is_some_and(|(last, _)| *last >= id)
                {
                    return Err(lx.err(format!("device {id} out of order or repeated")));
                }
                m.devices.insert(
                    id,
                    Device {
                        details,
                        mappings: maps.into_iter().collect(),
                    },
                );
            }
            Some(Tag::Open(n, _) | Tag::Empty(n, _)) => {
                return Err(lx.err(format!("unexpected <{n}>")))
            }
            Some(Tag::Close(n)) => return Err(lx.err(format!("unexpected </{n}>"))),
            None => return Err(lx.err("missing </superblock>")),
        }
    }
    if lx.next()?.is_some() {
        return Err(lx.err("content after </superblock>"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"<superblock uuid="" time="1" transaction="1" version="2" data_block_size="128" nr_data_blocks="1000">
  <def name="10">
    <range_mapping origin_begin="0" data_begin="0" length="3" time="0"/>
    <single_mapping origin_block="10" data_block="100" time="0"/>
  </def>
  <device dev_id="1" mapped_blocks="4" transaction="0" creation_time="0" snap_time="1">
    <ref name="10"/>
  </device>
  <device dev_id="2" mapped_blocks="4" transaction="1" creation_time="1" snap_time="1">
    <ref name="10"/>
  </device>
</superblock>"#;

    #[test]
    fn reads_defs_and_refs_and_writes_the_flat_form() {
        let m = parse_xml(SPEC_EXAMPLE).unwrap();
        assert_eq!(m.devices.len(), 2);
        assert_eq!(
            m.devices[&2].mappings[&10],
            BlockTime {
                block: 100,
                time: 0
            }
        );
        assert_eq!(m.devices[&1].mappings.len(), 4);
        let flat = write_xml(&m);
        assert!(flat.contains(
            "<range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>"
        ));
        assert!(!flat.contains("<def"));
        assert_eq!(parse_xml(&flat).unwrap(), m);
        m.validate().unwrap();
    }

    #[test]
    fn bad_xml_is_an_error_with_a_line() {
        let cases = [
            "",
            "<device/>",
            "<superblock time=\"1\"></superblock>",
            "<superblock uuid=\"\" time=\"x\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"1\"></superblock>",
            "<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"1\" bogus=\"1\"></superblock>",
            "<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"1\">",
            "<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"9\">\n<device dev_id=\"1\" mapped_blocks=\"2\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n<single_mapping origin_block=\"5\" data_block=\"1\" time=\"0\"/>\n<single_mapping origin_block=\"4\" data_block=\"2\" time=\"0\"/>\n</device></superblock>",
            "<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"9\"><device dev_id=\"1\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\"><ref name=\"9\"/></device></superblock>",
            "<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"9\"><device dev_id=\"1\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\"><range_mapping origin_begin=\"18446744073709551615\" data_begin=\"0\" length=\"2\" time=\"0\"/></device></superblock>",
            "<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"9\"></superblock><extra/>",
            "<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"9\"><!-- unterminated",
        ];
        for c in cases {
            match parse_xml(c) {
                Err(MetadataError::Invalid(msg)) => assert!(msg.starts_with("xml line "), "{msg}"),
                other => panic!("{c:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn runs_follow_the_dumper() {
        let m: BTreeMap<u64, BlockTime> = [(0, 5, 0), (1, 6, 0), (2, 7, 1), (4, 9, 1), (5, 10, 1)]
            .into_iter()
            .map(|(v, d, t)| (v, BlockTime { block: d, time: t }))
            .collect();
        assert_eq!(runs(&m), vec![(0, 5, 0, 2), (2, 7, 1, 1), (4, 9, 1, 2)]);
    }
}
