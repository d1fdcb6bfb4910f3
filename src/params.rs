//! StorageClass `parameters`, validated into what provisioning needs.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::path::{self, Dialect, PathError, TemplateError};

pub mod quantity;
pub mod shares;

pub use shares::{Export, MinFree};

/// Every key a class may carry; anything else is refused so a typo never silently
/// changes where data goes or what happens to it on delete.
pub const KNOWN_KEYS: &[&str] = &[
    "server",
    "share",
    "port",
    "mountPort",
    "pathPattern",
    "subDir",
    "onDelete",
    "archiveOnDelete",
    "mode",
    "uid",
    "gid",
    "directorySharing",
    "existingDirectory",
    "caseInsensitive",
    "shares",
    "minFreeBytes",
    "minFreePercent",
    "archiveRetention",
    "usageWarnPercent",
];

/// What happens to a directory when its PV is released with reclaim policy Delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDelete {
    Delete,
    Retain,
    Archive,
}

impl OnDelete {
    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
            OnDelete::Archive => "archive",
        }
    }
}

impl fmt::Display for OnDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OnDelete {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, ParamError> {
        match s {
            "delete" => Ok(OnDelete::Delete),
            "retain" => Ok(OnDelete::Retain),
            "archive" => Ok(OnDelete::Archive),
            other => Err(ParamError::Invalid {
                key: "onDelete",
                value: other.to_string(),
                why: "expected one of delete, retain, archive",
            }),
        }
    }
}

/// Who may have a volume whose directory equals, contains or lies inside another PV's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Every volume has a directory of its own: the default, and the only safe one
    /// when templates take values that tenants control.
    None,
    /// Claims of one namespace may share a directory (several claims pointed at one
    /// folder by a pathPattern); other namespaces never.
    Namespace,
    /// Anyone may: the class's owner takes responsibility for what its templates render.
    Any,
}

/// What to do when the directory a claim renders to exists already and no PV records it
/// (left by `retain`, by a PV deleted by hand, or data put there by someone else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse the claim: handing someone else's data to a new tenant is the worse error.
    Refuse,
    /// Take the directory as it is, without changing its mode or owner.
    Adopt,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("unknown parameter {0:?} (known: {known})", known = KNOWN_KEYS.join(", "))]
    Unknown(String),
    #[error("parameter {key}={value:?} is invalid: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "no NFS server: set parameter \"server\" on the StorageClass or NFS_SERVER on the provisioner"
    )]
    NoServer,
    #[error(
        "no NFS share: set parameter \"share\" on the StorageClass or NFS_PATH on the provisioner"
    )]
    NoShare,
    #[error("parameter share={0:?} is invalid: {1}")]
    Share(String, PathError),
    #[error("parameters pathPattern and subDir are both set; use one")]
    BothTemplates,
    #[error("parameter {key} is invalid: {source}")]
    Template {
        key: &'static str,
        source: TemplateError,
    },
    #[error(
        "parameter shares cannot be combined with server or share; list every export in shares"
    )]
    SharesWithServer,
    #[error("parameter shares entry {entry:?} is invalid: {why}")]
    Shares { entry: String, why: String },
    #[error(
        "parameters onDelete={on_delete:?} and archiveOnDelete={archive:?} disagree; set only onDelete"
    )]
    Conflict { on_delete: String, archive: String },
}

/// Provisioner-wide defaults for classes that name no server or share.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub server: Option<String>,
    pub share: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassParams {
    pub server: String,
    pub share: String,
    pub port: Option<u16>,
    pub mount_port: Option<u16>,
    pub template: Option<(Dialect, String)>,
    pub on_delete: OnDelete,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub sharing: Sharing,
    pub existing: Existing,
    /// The server treats names case-insensitively, so `Data` and `data` are one directory.
    pub case_insensitive: bool,
    /// Every export the class may place volumes on: those `shares` lists, or the one of
    /// `server` and `share` (the fields above name the first).
    pub exports: Vec<Export>,
    /// Archives of this class older than this are removed in the background.
    pub archive_retention: Option<std::time::Duration>,
}

/// Default directory mode: what nfs-subdir-external-provisioner users expect, so any
/// pod uid can write.
pub const DEFAULT_MODE: u32 = 0o777;

impl ClassParams {
    pub fn parse(
        params: &BTreeMap<String, String>,
        defaults: &Defaults,
    ) -> Result<Self, ParamError> {
        if let Some(unknown) = params.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(ParamError::Unknown(unknown.clone()));
        }
        let get = |k: &str| params.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());

        let listed = shares::listed(get("shares"), get("server").or(get("share")).is_some())?;
        let first = listed.as_ref().and_then(|l| l.first());
        let server = first
            .map(|e| e.server.clone())
            .or_else(|| get("server").map(str::to_string))
            .or_else(|| defaults.server.clone())
            .ok_or(ParamError::NoServer)?;
        validate_server(&server)?;
        let raw_share = first
            .map(|e| e.share.clone())
            .or_else(|| get("share").map(str::to_string))
            .or_else(|| defaults.share.clone())
            .ok_or(ParamError::NoShare)?;
        let share = path::normalize_share(&raw_share)
            .map_err(|e| ParamError::Share(raw_share.clone(), e))?;

        let port = get("port").map(|v| parse_port("port", v)).transpose()?;
        let mount_port = get("mountPort")
            .map(|v| parse_port("mountPort", v))
            .transpose()?;
        let min_free = MinFree::parse(get("minFreeBytes"), get("minFreePercent"))?;
        let exports = shares::exports(listed, (&server, &share), (port, mount_port), min_free);
        // With `shares`, the single-export fields name the first export, ports included.
        let (port, mount_port) = exports
            .first()
            .map_or((port, mount_port), |e| (e.port, e.mount_port));

        let template = match (get("pathPattern"), get("subDir")) {
            (Some(_), Some(_)) => return Err(ParamError::BothTemplates),
            (Some(p), None) => Some((Dialect::PathPattern, "pathPattern", p)),
            (None, Some(s)) => Some((Dialect::SubDir, "subDir", s)),
            (None, None) => None,
        };
        let template = match template {
            Some((dialect, key, t)) => {
                path::check_template(t, dialect)
                    .map_err(|source| ParamError::Template { key, source })?;
                Some((dialect, t.to_string()))
            }
            None => None,
        };

        // Read by the usage scan, from the class as it is then; refused here so a typo
        // shows on the first claim instead of silently warning at 100 %.
        usage_warn_percent(params)?;
        let on_delete = parse_on_delete(get("onDelete"), get("archiveOnDelete"))?;
        let mode = get("mode")
            .map(parse_mode)
            .transpose()?
            .unwrap_or(DEFAULT_MODE);
        let uid = get("uid").map(|v| parse_id("uid", v)).transpose()?;
        let gid = get("gid").map(|v| parse_id("gid", v)).transpose()?;
        let sharing = match get("directorySharing") {
            None | Some("none") => Sharing::None,
            Some("namespace") => Sharing::Namespace,
            Some("any") => Sharing::Any,
            Some(other) => {
                return Err(invalid(
                    "directorySharing",
                    other,
                    "expected none, namespace or any",
                ));
            }
        };
        let existing = match get("existingDirectory") {
            None | Some("refuse") => Existing::Refuse,
            Some("adopt") => Existing::Adopt,
            Some(other) => {
                return Err(invalid(
                    "existingDirectory",
                    other,
                    "expected refuse or adopt",
                ));
            }
        };
        let case_insensitive = match get("caseInsensitive")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(invalid(
                    "caseInsensitive",
                    get("caseInsensitive").unwrap_or_default(),
                    "expected \"true\" or \"false\"",
                ));
            }
        };

        let archive_retention = match get("archiveRetention") {
            None => None,
            Some(v) => Some(crate::units::parse_age(v).map_err(|_| {
                invalid(
                    "archiveRetention",
                    v,
                    "expected an age with a unit s, m, h or d, such as 30d or 12h",
                )
            })?),
        };

        Ok(Self {
            server,
            share,
            port,
            mount_port,
            template,
            on_delete,
            mode,
            uid,
            gid,
            sharing,
            existing,
            case_insensitive,
            exports,
            archive_retention,
        })
    }
}

fn invalid(key: &'static str, value: &str, why: &'static str) -> ParamError {
    ParamError::Invalid {
        key,
        value: value.to_string(),
        why,
    }
}

fn validate_server(server: &str) -> Result<(), ParamError> {
    let ok = server.len() <= 253
        && server
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(ParamError::Invalid {
            key: "server",
            value: server.to_string(),
            why: "expected a host name or an IP address",
        })
    }
}

fn parse_port(key: &'static str, v: &str) -> Result<u16, ParamError> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ParamError::Invalid {
            key,
            value: v.to_string(),
            why: "expected a port number from 1 to 65535",
        })
}

fn parse_id(key: &'static str, v: &str) -> Result<u32, ParamError> {
    v.parse::<u32>().map_err(|_| ParamError::Invalid {
        key,
        value: v.to_string(),
        why: "expected a numeric id from 0 to 4294967295",
    })
}

fn parse_mode(v: &str) -> Result<u32, ParamError> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !digits.is_empty())
        .ok_or(ParamError::Invalid {
            key: "mode",
            value: v.to_string(),
            why: "expected an octal mode such as \"0777\" or \"0750\"",
        })
}

/// `onDelete` wins; the older `archiveOnDelete` is honoured when alone. With neither,
/// the directory is archived: the incumbent's default, and the one that loses nothing
/// when a class is moved over from it.
fn parse_on_delete(on_delete: Option<&str>, archive: Option<&str>) -> Result<OnDelete, ParamError> {
    let from_archive = archive
        .map(|a| match a.to_ascii_lowercase().as_str() {
            "true" => Ok(OnDelete::Archive),
            "false" => Ok(OnDelete::Delete),
            _ => Err(ParamError::Invalid {
                key: "archiveOnDelete",
                value: a.to_string(),
                why: "expected \"true\" or \"false\"",
            }),
        })
        .transpose()?;
    match (on_delete.map(OnDelete::from_str).transpose()?, from_archive) {
        (Some(o), Some(a)) if o != a => Err(ParamError::Conflict {
            on_delete: o.to_string(),
            archive: archive.unwrap_or_default().to_string(),
        }),
        (Some(o), _) => Ok(o),
        (None, Some(a)) => Ok(a),
        (None, None) => Ok(OnDelete::Archive),
    }
}

/// `usageWarnPercent`: the share of a volume's requested capacity past which its
/// claim gets an `OverCapacity` warning (1 to 1000; `None` when unset).
pub fn usage_warn_percent(params: &BTreeMap<String, String>) -> Result<Option<u32>, ParamError> {
    let Some(raw) = params
        .get("usageWarnPercent")
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    match raw.parse::<u32>() {
        Ok(p) if (1..=1000).contains(&p) => Ok(Some(p)),
        _ => Err(invalid(
            "usageWarnPercent",
            raw,
            "expected a whole number of percent from 1 to 1000",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn defaults() -> Defaults {
        Defaults {
            server: Some("10.0.0.5".into()),
            share: Some("/exports/k8s/".into()),
        }
    }

    #[test]
    fn defaults_fill_in_and_are_normalized() {
        let c = ClassParams::parse(&p(&[]), &defaults()).unwrap();
        assert_eq!(c.server, "10.0.0.5");
        assert_eq!(c.share, "/exports/k8s");
        assert_eq!(c.on_delete, OnDelete::Archive);
        assert_eq!(c.mode, 0o777);
        assert_eq!(
            (c.uid, c.gid, c.port, c.mount_port),
            (None, None, None, None)
        );
        assert!(c.template.is_none());
    }

    #[test]
    fn every_parameter_is_read() {
        let c = ClassParams::parse(
            &p(&[
                ("server", "nfs.example.internal"),
                ("share", "/srv/a"),
                ("port", "2049"),
                ("mountPort", "20048"),
                ("pathPattern", "${.PVC.namespace}/${.PVC.name}"),
                ("onDelete", "retain"),
                ("mode", "0750"),
                ("uid", "1000"),
                ("gid", "2000"),
                ("directorySharing", "namespace"),
                ("existingDirectory", "adopt"),
                ("caseInsensitive", "TRUE"),
                ("archiveRetention", "30d"),
            ]),
            &Defaults::default(),
        )
        .unwrap();
        assert_eq!(c.server, "nfs.example.internal");
        assert_eq!(c.share, "/srv/a");
        assert_eq!((c.port, c.mount_port), (Some(2049), Some(20048)));
        assert_eq!(
            c.template,
            Some((
                Dialect::PathPattern,
                "${.PVC.namespace}/${.PVC.name}".into()
            ))
        );
        assert_eq!(c.on_delete, OnDelete::Retain);
        assert_eq!((c.mode, c.uid, c.gid), (0o750, Some(1000), Some(2000)));
        assert_eq!(
            (c.sharing, c.existing, c.case_insensitive),
            (Sharing::Namespace, Existing::Adopt, true)
        );
        assert_eq!(
            c.archive_retention,
            Some(std::time::Duration::from_secs(30 * 86400))
        );
        assert_eq!(
            ClassParams::parse(&p(&[]), &defaults())
                .unwrap()
                .archive_retention,
            None
        );
    }

    #[test]
    fn isolation_defaults_are_the_safe_ones() {
        let c = ClassParams::parse(&p(&[]), &defaults()).unwrap();
        assert_eq!(
            (c.sharing, c.existing, c.case_insensitive),
            (Sharing::None, Existing::Refuse, false)
        );
        for (k, v) in [
            ("directorySharing", "all"),
            ("existingDirectory", "take"),
            ("caseInsensitive", "yes"),
        ] {
            assert!(
                matches!(ClassParams::parse(&p(&[(k, v)]), &defaults()), Err(ParamError::Invalid { key, .. }) if key == k),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn on_delete_table() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<OnDelete, ()>);
        let cases: &[Case] = &[
            (&[("onDelete", "delete")], Ok(OnDelete::Delete)),
            (&[("onDelete", "archive")], Ok(OnDelete::Archive)),
            (&[("archiveOnDelete", "false")], Ok(OnDelete::Delete)),
            (&[("archiveOnDelete", "true")], Ok(OnDelete::Archive)),
            (&[("archiveOnDelete", "True")], Ok(OnDelete::Archive)),
            (
                &[("onDelete", "delete"), ("archiveOnDelete", "false")],
                Ok(OnDelete::Delete),
            ),
            (
                &[("onDelete", "delete"), ("archiveOnDelete", "true")],
                Err(()),
            ),
            (&[("onDelete", "remove")], Err(())),
            (&[("archiveOnDelete", "yes")], Err(())),
        ];
        for (params, want) in cases {
            let got = ClassParams::parse(&p(params), &defaults())
                .map(|c| c.on_delete)
                .map_err(|_| ());
            assert_eq!(got, *want, "{params:?}");
        }
    }

    #[test]
    fn bad_input_is_refused_with_the_key_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("sever", "x")], "unknown parameter \"sever\""),
            (&[("mode", "999")], "mode"),
            (&[("mode", "07777777")], "mode"),
            (&[("mode", "")], ""), // empty means unset: accepted
            (&[("uid", "-1")], "uid"),
            (&[("gid", "abc")], "gid"),
            (&[("port", "0")], "port"),
            (&[("mountPort", "70000")], "mountPort"),
            (&[("share", "relative/path")], "share"),
            (&[("share", "/srv/../etc")], "share"),
            (&[("server", "bad host;rm")], "server"),
            (&[("pathPattern", "${.PVC.bogus}")], "pathPattern"),
            (&[("subDir", "${.PVC.name}")], "subDir"),
            (&[("pathPattern", "a"), ("subDir", "b")], "both set"),
            (&[("archiveRetention", "30")], "archiveRetention"),
            (&[("archiveRetention", "-1d")], "archiveRetention"),
        ];
        for (params, needle) in cases {
            let got = ClassParams::parse(&p(params), &defaults());
            if needle.is_empty() {
                assert!(got.is_ok(), "{params:?}: {got:?}");
            } else {
                let msg = got.expect_err(&format!("{params:?} must fail")).to_string();
                assert!(msg.contains(needle), "{params:?}: {msg}");
            }
        }
    }

    #[test]
    fn missing_server_or_share_is_explained() {
        let none = Defaults::default();
        assert_eq!(
            ClassParams::parse(&p(&[("share", "/a")]), &none),
            Err(ParamError::NoServer)
        );
        assert_eq!(
            ClassParams::parse(&p(&[("server", "h")]), &none),
            Err(ParamError::NoShare)
        );
    }

    #[test]
    fn usage_warn_percent_is_a_bounded_whole_number() {
        let with = |v: &str| BTreeMap::from([("usageWarnPercent".to_string(), v.to_string())]);
        assert_eq!(usage_warn_percent(&BTreeMap::new()), Ok(None));
        assert_eq!(usage_warn_percent(&with("90")), Ok(Some(90)));
        assert_eq!(usage_warn_percent(&with(" 150 ")), Ok(Some(150)));
        for bad in ["0", "1001", "90%", "-5", "0.9", "x"] {
            assert!(usage_warn_percent(&with(bad)).is_err(), "{bad}");
        }
        let mut params = with("abc");
        params.insert("server".into(), "10.0.0.1".into());
        params.insert("share".into(), "/srv".into());
        assert!(matches!(
            ClassParams::parse(&params, &Defaults::default()),
            Err(ParamError::Invalid {
                key: "usageWarnPercent",
                ..
            })
        ));
    }
}
