//! Classes over several exports and how full an export may get: the `shares` parameter
//! (a comma-separated list of `server:/path` entries, each with optional `port=`,
//! `mountPort=`, `minFreeBytes=` and `minFreePercent=`) and the class-wide
//! `minFreeBytes` / `minFreePercent` floors. Which export a volume goes to is decided
//! in `plan::placement`; this only reads and validates.

use super::quantity::parse_bytes;
use super::{ParamError, parse_port, validate_server};
use crate::path;

/// A class may list at most this many exports: every provisioning asks each of them
/// for its free space, so the fan-out stays small.
pub const MAX_EXPORTS: usize = 16;

/// How much must stay free on an export after a claim's requested size is taken off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinFree {
    pub bytes: Option<u64>,
    /// Of the export's total size, 0 to 99.
    pub percent: Option<u8>,
}

impl MinFree {
    pub fn is_set(&self) -> bool {
        self.bytes.is_some() || self.percent.is_some()
    }

    /// Reads `minFreeBytes` and `minFreePercent` (class-wide or of one export).
    pub fn parse(bytes: Option<&str>, percent: Option<&str>) -> Result<Self, ParamError> {
        let bytes = bytes
            .map(|v| {
                parse_bytes(v).map_err(|_| ParamError::Invalid {
                    key: "minFreeBytes",
                    value: v.to_string(),
                    why: "expected a quantity such as 10Gi or 500M",
                })
            })
            .transpose()?;
        let percent = percent
            .map(|v| {
                v.parse::<u8>()
                    .ok()
                    .filter(|p| *p < 100)
                    .ok_or(ParamError::Invalid {
                        key: "minFreePercent",
                        value: v.to_string(),
                        why: "expected a whole percentage from 0 to 99",
                    })
            })
            .transpose()?;
        Ok(Self { bytes, percent })
    }

    /// Each floor of `self`, or the class's where this export sets none.
    fn or(self, class: MinFree) -> MinFree {
        MinFree {
            bytes: self.bytes.or(class.bytes),
            percent: self.percent.or(class.percent),
        }
    }
}

/// One export a class may place volumes on, with the class-wide values filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    pub server: String,
    pub share: String,
    pub port: Option<u16>,
    pub mount_port: Option<u16>,
    pub min_free: MinFree,
}

/// An entry of `shares` as written, before the class-wide values fill it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub server: String,
    pub share: String,
    port: Option<u16>,
    mount_port: Option<u16>,
    min_free: MinFree,
}

/// The entries of `shares`, if set. Refused with `server` or `share` also set: which of
/// them would win is a guess a class should not leave to the reader.
pub fn listed(raw: Option<&str>, single_form: bool) -> Result<Option<Vec<Listed>>, ParamError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if single_form {
        return Err(ParamError::SharesWithServer);
    }
    let mut entries: Vec<Listed> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let listed = parse_entry(entry)?;
        if entries
            .iter()
            .any(|e| e.server == listed.server && e.share == listed.share)
        {
            return Err(shares_error(entry, "the export is listed twice".into()));
        }
        entries.push(listed);
    }
    if entries.is_empty() {
        return Err(shares_error(raw, "no export listed".into()));
    }
    if entries.len() > MAX_EXPORTS {
        return Err(shares_error(
            raw,
            format!("{} exports listed; at most {MAX_EXPORTS}", entries.len()),
        ));
    }
    Ok(Some(entries))
}

/// Every export of the class: the listed ones, or the one of `server` and `share`; the
/// class's ports and floors apply where an entry sets none.
pub fn exports(
    listed: Option<Vec<Listed>>,
    single: (&str, &str),
    ports: (Option<u16>, Option<u16>),
    class_min_free: MinFree,
) -> Vec<Export> {
    match listed {
        Some(entries) => entries
            .into_iter()
            .map(|e| Export {
                server: e.server,
                share: e.share,
                port: e.port.or(ports.0),
                mount_port: e.mount_port.or(ports.1),
                min_free: e.min_free.or(class_min_free),
            })
            .collect(),
        None => vec![Export {
            server: single.0.to_string(),
            share: single.1.to_string(),
            port: ports.0,
            mount_port: ports.1,
            min_free: class_min_free,
        }],
    }
}

fn shares_error(entry: &str, why: String) -> ParamError {
    ParamError::Shares {
        entry: entry.to_string(),
        why,
    }
}

/// `server:/path key=value ...`; a bracketed IPv6 literal is one server (`[fd00::1]:/x`).
fn parse_entry(entry: &str) -> Result<Listed, ParamError> {
    let mut words = entry.split_whitespace();
    let export = words.next().unwrap_or_default();
    let split = if export.starts_with('[') {
        export.find("]:").map(|i| i + 1)
    } else {
        export.find(':')
    };
    let (server, share) = split
        .map(|i| (&export[..i], &export[i + 1..]))
        .filter(|(server, share)| !server.is_empty() && share.starts_with('/'))
        .ok_or_else(|| {
            shares_error(
                entry,
                "expected server:/path, such as 192.0.2.10:/srv/nfs".into(),
            )
        })?;
    validate_server(server)?;
    let share = path::normalize_share(share)
        .map_err(|e| shares_error(entry, format!("the path is invalid: {e}")))?;
    let mut options = std::collections::BTreeMap::new();
    for word in words {
        let (key, value) = word.split_once('=').ok_or_else(|| {
            shares_error(
                entry,
                format!("{word:?}: expected key=value after the export"),
            )
        })?;
        let known = ["port", "mountPort", "minFreeBytes", "minFreePercent"];
        if !known.contains(&key) {
            return Err(shares_error(
                entry,
                format!("unknown option {key:?} (known: {})", known.join(", ")),
            ));
        }
        if options.insert(key, value).is_some() {
            return Err(shares_error(entry, format!("option {key} given twice")));
        }
    }
    let port = options
        .get("port")
        .map(|v| parse_port("port", v))
        .transpose()?;
    let mount_port = options
        .get("mountPort")
        .map(|v| parse_port("mountPort", v))
        .transpose()?;
    let min_free = MinFree::parse(
        options.get("minFreeBytes").copied(),
        options.get("minFreePercent").copied(),
    )?;
    Ok(Listed {
        server: server.to_string(),
        share,
        port,
        mount_port,
        min_free,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::params::{ClassParams, Defaults};

    fn parse(pairs: &[(&str, &str)]) -> Result<ClassParams, ParamError> {
        let params: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let defaults = Defaults {
            server: Some("10.0.0.5".into()),
            share: Some("/srv/default".into()),
        };
        ClassParams::parse(&params, &defaults)
    }

    fn export(server: &str, share: &str) -> Export {
        Export {
            server: server.into(),
            share: share.into(),
            port: None,
            mount_port: None,
            min_free: MinFree::default(),
        }
    }

    #[test]
    fn a_list_of_exports_with_their_own_options() {
        let c = parse(&[
            (
                "shares",
                " server-a:/srv/a/ , 192.0.2.7:/srv/b port=2049 mountPort=20048 minFreePercent=5,\n[fd00::1]:/x minFreeBytes=1Gi, ",
            ),
            ("port", "12049"),
            ("minFreeBytes", "10Gi"),
        ])
        .unwrap();
        let mut a = export("server-a", "/srv/a");
        a.port = Some(12049);
        a.min_free.bytes = Some(10 << 30);
        let mut b = export("192.0.2.7", "/srv/b");
        (b.port, b.mount_port) = (Some(2049), Some(20048));
        b.min_free = MinFree {
            bytes: Some(10 << 30),
            percent: Some(5),
        };
        let mut v6 = export("[fd00::1]", "/x");
        v6.port = Some(12049);
        v6.min_free.bytes = Some(1 << 30);
        assert_eq!(c.exports, [a, b, v6]);
        // The single-export fields name the first, so code reading them stays valid.
        assert_eq!(
            (c.server.as_str(), c.share.as_str(), c.port),
            ("server-a", "/srv/a", Some(12049))
        );
    }

    #[test]
    fn the_single_form_is_one_export_and_the_defaults_still_apply() {
        let c = parse(&[("minFreePercent", "10")]).unwrap();
        let mut only = export("10.0.0.5", "/srv/default");
        only.min_free.percent = Some(10);
        assert_eq!(c.exports, [only]);
        assert_eq!(
            parse(&[]).unwrap().exports,
            [export("10.0.0.5", "/srv/default")]
        );
    }

    #[test]
    fn bad_lists_are_refused_with_the_entry_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("shares", "a:/x"), ("server", "b")],
                "shares cannot be combined",
            ),
            (
                &[("shares", "a:/x"), ("share", "/y")],
                "shares cannot be combined",
            ),
            (&[("shares", " , ")], "no export listed"),
            (&[("shares", "a:/x, a:/x/ port=1")], "listed twice"),
            (&[("shares", "a/x")], "expected server:/path"),
            (&[("shares", ":/x")], "expected server:/path"),
            (&[("shares", "a:x")], "expected server:/path"),
            (&[("shares", "a:/../etc")], "the path is invalid"),
            (&[("shares", "bad;host:/x")], "server"),
            (&[("shares", "a:/x port")], "expected key=value"),
            (&[("shares", "a:/x speed=1")], "unknown option \"speed\""),
            (&[("shares", "a:/x port=1 port=2")], "given twice"),
            (&[("shares", "a:/x port=0")], "port"),
            (&[("shares", "a:/x minFreePercent=100")], "minFreePercent"),
            (&[("shares", "a:/x minFreeBytes=lots")], "minFreeBytes"),
            (&[("minFreeBytes", "-1Gi")], "minFreeBytes"),
            (&[("minFreePercent", "5.5")], "minFreePercent"),
        ];
        for (params, needle) in cases {
            let msg = parse(params)
                .expect_err(&format!("{params:?} must fail"))
                .to_string();
            assert!(msg.contains(needle), "{params:?}: {msg}");
        }
        let many = (0..=MAX_EXPORTS)
            .map(|i| format!("h:/e{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let msg = parse(&[("shares", &many)]).unwrap_err().to_string();
        assert!(msg.contains("at most 16"), "{msg}");
    }
}
