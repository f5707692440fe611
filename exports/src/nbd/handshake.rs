//! The fixed newstyle handshake: greeting, client flags, then options until
//! the client picks an export (GO or EXPORT_NAME) or leaves. It runs as
//! async code in the connection's task over the non-blocking socket; the
//! caller bounds it in time.

use std::io;
use std::sync::Arc;

use super::export::Export;
use super::proto::*;
use super::stream::Wire;

/// Finds exports at this address: by name ("" is the default export when
/// there is only one), and all names for LIST.
pub trait Exports {
    fn find(&self, name: &str) -> Option<Arc<Export>>;
    fn names(&self) -> Vec<String>;
}

/// What the client settled on.
pub struct Negotiated {
    pub export: Arc<Export>,
    pub structured: bool,
    /// base:allocation was selected for this export.
    pub allocation: bool,
    /// The client asked for block sizes in its GO, so it keeps to the
    /// minimum we advertised; otherwise it may send any offset and length
    /// (the kernel's client sends 512-byte multiples) and partial blocks
    /// are read-modify-written.
    pub block_sizes: bool,
}

/// Runs the handshake. Ok(None): the client aborted or broke a rule and
/// the connection just closes.
pub async fn negotiate(s: &mut Wire, exports: &dyn Exports) -> io::Result<Option<Negotiated>> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&greeting).await?;
    let cflags = read_u32(s).await?;
    if cflags & !(CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES) != 0 {
        return Ok(None);
    }
    let no_zeroes = cflags & CFLAG_NO_ZEROES != 0;
    let mut structured = false;
    // The export name and whether base:allocation was selected for it.
    let mut meta: Option<(String, bool)> = None;
    loop {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).await?;
        if u64::from_be_bytes(h[..8].try_into().unwrap_or_default()) != IHAVEOPT {
            return Ok(None);
        }
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap_or_default());
        if len > MAX_OPTION {
            s.skip(len as u64).await?;
            reply_err(s, opt, REP_ERR_TOO_BIG, "option too large").await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        match opt {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let Some(e) = exports.find(&name) else {
                    // No way to say why: close, as the protocol says.
                    return Ok(None);
                };
                let mut r = Vec::with_capacity(134);
                r.extend_from_slice(&e.size().to_be_bytes());
                r.extend_from_slice(&e.transmission_flags(structured).to_be_bytes());
                if !no_zeroes {
                    r.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&r).await?;
                let allocation = selected(&meta, &name);
                return Ok(Some(Negotiated {
                    export: e,
                    structured,
                    allocation,
                    block_sizes: false,
                }));
            }
            OPT_ABORT => {
                let _ = s.write_all(&option_reply(opt, REP_ACK, &[])).await;
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply_err(s, opt, REP_ERR_INVALID, "LIST takes no data").await?;
                    continue;
                }
                for n in exports.names() {
                    let mut d = (n.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(n.as_bytes());
                    s.write_all(&option_reply(opt, REP_SERVER, &d)).await?;
                }
                s.write_all(&option_reply(opt, REP_ACK, &[])).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, infos)) = parse_go(&data) else {
                    reply_err(s, opt, REP_ERR_INVALID, "malformed INFO/GO request").await?;
                    continue;
                };
                let Some(e) = exports.find(&name) else {
                    reply_err(s, opt, REP_ERR_UNKNOWN, &format!("no export {name:?}")).await?;
                    continue;
                };
                send_info(s, opt, &e, structured, &infos).await?;
                s.write_all(&option_reply(opt, REP_ACK, &[])).await?;
                if opt == OPT_GO {
                    let allocation = selected(&meta, &name);
                    return Ok(Some(Negotiated {
                        export: e,
                        structured,
                        allocation,
                        block_sizes: infos.contains(&INFO_BLOCK_SIZE),
                    }));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_err(s, opt, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data").await?;
                    continue;
                }
                structured = true;
                s.write_all(&option_reply(opt, REP_ACK, &[])).await?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = opt == OPT_SET_META_CONTEXT;
                if set {
                    // Replaced even when the request fails.
                    meta = None;
                }
                let Some((name, queries)) = parse_meta(&data) else {
                    reply_err(s, opt, REP_ERR_INVALID, "malformed meta context request").await?;
                    continue;
                };
                if set && !structured {
                    reply_err(s, opt, REP_ERR_INVALID, "structured replies first").await?;
                    continue;
                }
                if exports.find(&name).is_none() {
                    reply_err(s, opt, REP_ERR_UNKNOWN, &format!("no export {name:?}")).await?;
                    continue;
                }
                let matches = if set {
                    queries.iter().any(|q| q == BASE_ALLOCATION)
                } else {
                    queries.is_empty()
                        || queries.iter().any(|q| q == "base:" || q == BASE_ALLOCATION)
                };
                if matches {
                    let id = if set { BASE_ALLOCATION_ID } else { 0 };
                    let mut d = id.to_be_bytes().to_vec();
                    d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    s.write_all(&option_reply(opt, REP_META_CONTEXT, &d))
                        .await?;
                }
                if set {
                    meta = Some((name, matches));
                }
                s.write_all(&option_reply(opt, REP_ACK, &[])).await?;
            }
            OPT_STARTTLS => reply_err(s, opt, REP_ERR_POLICY, "TLS is not offered").await?,
            _ => reply_err(s, opt, REP_ERR_UNSUP, "option not supported").await?,
        }
    }
}

fn selected(meta: &Option<(String, bool)>, name: &str) -> bool {
    matches!(meta, Some((n, true)) if n == name)
}

async fn read_u32(s: &mut Wire) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await?;
    Ok(u32::from_be_bytes(b))
}

async fn reply_err(s: &mut Wire, opt: u32, kind: u32, msg: &str) -> io::Result<()> {
    s.write_all(&option_reply(opt, kind, msg.as_bytes())).await
}

/// A cursor over option data that fails instead of panicking.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn string(&mut self, n: usize) -> Option<String> {
        self.take(n)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// INFO/GO data: name length, name, info count, info types; nothing more.
pub fn parse_go(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut c = Cursor(data);
    let n = c.u32()? as usize;
    let name = c.string(n)?;
    let k = c.u16()? as usize;
    let infos = (0..k).map(|_| c.u16()).collect::<Option<Vec<_>>>()?;
    c.0.is_empty().then_some((name, infos))
}

/// LIST/SET_META_CONTEXT data: export name, then the queries.
pub fn parse_meta(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut c = Cursor(data);
    let n = c.u32()? as usize;
    let name = c.string(n)?;
    let q = c.u32()? as usize;
    let mut queries = Vec::new();
    for _ in 0..q {
        let l = c.u32()? as usize;
        queries.push(c.string(l)?);
    }
    c.0.is_empty().then_some((name, queries))
}

async fn send_info(
    s: &mut Wire,
    opt: u32,
    e: &Export,
    structured: bool,
    infos: &[u16],
) -> io::Result<()> {
    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&e.size().to_be_bytes());
    d.extend_from_slice(&e.transmission_flags(structured).to_be_bytes());
    s.write_all(&option_reply(opt, REP_INFO, &d)).await?;
    // Always sent: a client that did not ask is not bound by it (its
    // partial blocks are read-modify-written), and one that did learns our
    // alignment and keeps to it.
    let min = e.block_size();
    let pref = min.max(4096);
    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [min, pref, MAX_PAYLOAD] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    s.write_all(&option_reply(opt, REP_INFO, &d)).await?;
    if infos.contains(&INFO_NAME) {
        let mut d = INFO_NAME.to_be_bytes().to_vec();
        d.extend_from_slice(e.name.as_bytes());
        s.write_all(&option_reply(opt, REP_INFO, &d)).await?;
    }
    if infos.contains(&INFO_DESCRIPTION) {
        let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
        d.extend_from_slice(format!("ferrothin bdev {}", e.bdev_name).as_bytes());
        s.write_all(&option_reply(opt, REP_INFO, &d)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_data_is_parsed_exactly() {
        let mut go = 4u32.to_be_bytes().to_vec();
        go.extend_from_slice(b"vol1");
        go.extend_from_slice(&1u16.to_be_bytes());
        go.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_go(&go), Some(("vol1".into(), vec![3])));
        assert_eq!(parse_go(&go[..go.len() - 1]), None);
        let mut long = go.clone();
        long.push(0);
        assert_eq!(parse_go(&long), None);
        assert_eq!(parse_go(&[0xff, 0xff, 0xff, 0xff, 0, 0]), None);

        let mut m = 0u32.to_be_bytes().to_vec();
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&15u32.to_be_bytes());
        m.extend_from_slice(b"base:allocation");
        assert_eq!(
            parse_meta(&m),
            Some((String::new(), vec![BASE_ALLOCATION.into()]))
        );
        assert_eq!(parse_meta(&m[..m.len() - 2]), None);
    }
}
