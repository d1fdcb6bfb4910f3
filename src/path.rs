//! Directory paths inside a share, and the templates that name them.
//!
//! Everything that reaches the NFS server as a path goes through [`RelPath`], whose only
//! constructor refuses anything that could leave the share or name its root.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

/// Longest single name NFS servers accept (NAME_MAX on Linux exports).
const MAX_SEGMENT: usize = 255;
/// Longest relative path we will create; generous but bounded.
const MAX_PATH: usize = 1024;
/// Deepest nesting a template may produce.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("the directory path is empty, which would name the share root itself")]
    Empty,
    #[error("the directory path {0:?} is absolute; it must be relative to the share")]
    Absolute(String),
    #[error("the directory path {0:?} has an empty segment (\"//\" or a trailing \"/\")")]
    EmptySegment(String),
    #[error("the directory path {0:?} has a \".\" or \"..\" segment, which could leave the share")]
    DotSegment(String),
    #[error("the directory path contains a NUL or control character")]
    ControlChar,
    #[error(
        "the directory path contains an invisible Unicode format character (such as a zero-width space or a direction override)"
    )]
    FormatChar,
    #[error("the directory name {0:?}... is longer than {MAX_SEGMENT} bytes")]
    SegmentTooLong(String),
    #[error("the directory path is longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("the directory path is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error(
        "the directory path {0:?} lies in {METADATA_DIR:?}, which the provisioner keeps for itself"
    )]
    Reserved(String),
}

/// The provisioner's own directory at the share root: archive ownership records and
/// staging live there, out of reach of every volume (tenants never get a path into it).
pub const METADATA_DIR: &str = ".nfs3-provisioner";

/// Whether a first segment names [`METADATA_DIR`]; compared without case, for servers
/// that fold case.
fn is_reserved(first: &str) -> bool {
    first.eq_ignore_ascii_case(METADATA_DIR)
}

/// A validated path relative to a share root: at least one segment, none of them
/// empty, `.`, `..`, or containing NUL/control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Vec<String>);

impl RelPath {
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute(raw.to_string()));
        }
        if raw.chars().any(char::is_control) {
            return Err(PathError::ControlChar);
        }
        // Two names that look the same but differ by an invisible character would be
        // two directories to the server and one to the person reading an event.
        if raw.chars().any(is_format_char) {
            return Err(PathError::FormatChar);
        }
        if raw.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        let mut segments = Vec::new();
        for seg in raw.split('/') {
            if seg.is_empty() {
                return Err(PathError::EmptySegment(raw.to_string()));
            }
            if seg == "." || seg == ".." {
                return Err(PathError::DotSegment(raw.to_string()));
            }
            if seg.len() > MAX_SEGMENT {
                let head: String = seg.chars().take(32).collect();
                return Err(PathError::SegmentTooLong(head));
            }
            segments.push(seg.to_string());
        }
        if segments.len() > MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        // Every volume directory, archive name and recorded path comes through here: no
        // template (tenant annotations included) can reach the provisioner's records.
        if segments.first().is_some_and(|s| is_reserved(s)) {
            return Err(PathError::Reserved(raw.to_string()));
        }
        Ok(Self(segments))
    }

    /// A path inside [`METADATA_DIR`] (the directory itself for no `parts`): the only
    /// way to name it. `parts` are checked as any path is.
    pub fn metadata(parts: &[&str]) -> Result<Self, PathError> {
        let mut segments = vec![METADATA_DIR.to_string()];
        if !parts.is_empty() {
            segments.extend(Self::parse(&parts.join("/"))?.0);
        }
        if segments.len() > MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        Ok(Self(segments))
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The last segment: the directory that is created, removed or archived.
    pub fn leaf(&self) -> &str {
        // parse() guarantees at least one segment.
        self.0.last().map(String::as_str).unwrap_or_default()
    }

    /// The segments above the leaf (empty when the leaf sits in the share root).
    pub fn parent_segments(&self) -> &[String] {
        &self.0[..self.0.len() - 1]
    }

    /// The same parent with another leaf name.
    pub fn with_leaf(&self, leaf: &str) -> Result<Self, PathError> {
        let mut parts: Vec<&str> = self.parent_segments().iter().map(String::as_str).collect();
        parts.push(leaf);
        Self::parse(&parts.join("/"))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// Unicode's format characters (general category Cf): invisible, and never needed in a
/// directory name.
fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// The form in which two absolute paths are compared for ownership: Unicode NFC (a
/// server may store `é` composed or not, and some normalise), lower-cased for a
/// case-insensitive server, without a trailing slash.
///
/// Every provisioning and every release compares its path with that of every cached
/// PV: an ASCII path (nearly all of them) is already NFC and lower-cases byte by byte,
/// so it is compared as it is, without a copy.
pub fn compare_key(full_path: &str, case_insensitive: bool) -> Cow<'_, str> {
    use unicode_normalization::UnicodeNormalization;
    let trimmed = full_path.trim_end_matches('/');
    if trimmed.is_ascii() {
        return if case_insensitive && trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(trimmed.to_ascii_lowercase())
        } else {
            Cow::Borrowed(trimmed)
        };
    }
    let nfc: String = trimmed.nfc().collect();
    Cow::Owned(if case_insensitive {
        nfc.to_lowercase()
    } else {
        nfc
    })
}

/// Whether `inner` is `outer` or lies below it (both in [`compare_key`] form).
pub fn nests(inner: &str, outer: &str) -> bool {
    inner == outer
        || outer.is_empty()
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Normalises an export path (`/srv/nfs/`, `/srv//nfs`) so the same share is always
/// spelled the same way in PVs and in the connection pool.
pub fn normalize_share(share: &str) -> Result<String, PathError> {
    if !share.starts_with('/') {
        return Err(PathError::Absolute(share.to_string()));
    }
    if share.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    let parts: Vec<&str> = share.split('/').filter(|s| !s.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(PathError::DotSegment(share.to_string()));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// What a template may refer to.
pub struct TemplateVars<'a> {
    pub namespace: &'a str,
    pub pvc_name: &'a str,
    pub pv_name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unterminated \"${{\" in {0:?}")]
    Unterminated(String),
    #[error("unknown variable ${{{var}}} in {template:?}; known: {known}")]
    UnknownVariable {
        var: String,
        template: String,
        known: &'static str,
    },
    #[error("the claim has no label {0:?}, which the path template uses")]
    MissingLabel(String),
    #[error("the claim has no annotation {0:?}, which the path template uses")]
    MissingAnnotation(String),
}

/// Which of the two template dialects a class uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// nfs-subdir-external-provisioner's `pathPattern`: `${.PVC.namespace}` and friends.
    PathPattern,
    /// csi-driver-nfs's `subDir`: `${pvc.metadata.name}` and friends.
    SubDir,
}

impl Dialect {
    fn known(self) -> &'static str {
        match self {
            Dialect::PathPattern => {
                ".PVC.namespace, .PVC.name, .PVC.labels.KEY, .PVC.annotations.KEY, .PV.name"
            }
            Dialect::SubDir => "pvc.metadata.name, pvc.metadata.namespace, pv.metadata.name",
        }
    }

    fn lookup(self, var: &str, vars: &TemplateVars<'_>) -> Option<Result<String, TemplateError>> {
        let found =
            match self {
                Dialect::PathPattern => {
                    match var {
                        ".PVC.namespace" => vars.namespace.to_string(),
                        ".PVC.name" => vars.pvc_name.to_string(),
                        ".PV.name" => vars.pv_name.to_string(),
                        _ => {
                            if let Some(key) = var.strip_prefix(".PVC.labels.") {
                                return Some(
                                    vars.labels.get(key).cloned().ok_or_else(|| {
                                        TemplateError::MissingLabel(key.to_string())
                                    }),
                                );
                            }
                            if let Some(key) = var.strip_prefix(".PVC.annotations.") {
                                return Some(vars.annotations.get(key).cloned().ok_or_else(|| {
                                    TemplateError::MissingAnnotation(key.to_string())
                                }));
                            }
                            return None;
                        }
                    }
                }
                Dialect::SubDir => match var {
                    "pvc.metadata.namespace" => vars.namespace.to_string(),
                    "pvc.metadata.name" => vars.pvc_name.to_string(),
                    "pv.metadata.name" => vars.pv_name.to_string(),
                    _ => return None,
                },
            };
        Some(Ok(found))
    }
}

/// Substitutes `${...}` variables; literal text is kept as is. The result is not yet a
/// safe path: callers pass it to [`RelPath::parse`].
pub fn render(
    template: &str,
    dialect: Dialect,
    vars: &TemplateVars<'_>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| TemplateError::Unterminated(template.to_string()))?;
        let var = after[..end].trim();
        match dialect.lookup(var, vars) {
            Some(value) => out.push_str(&value?),
            None => {
                return Err(TemplateError::UnknownVariable {
                    var: var.to_string(),
                    template: template.to_string(),
                    known: dialect.known(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The variables a template names, in order.
fn variables(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        out.push(after[..end].trim());
        rest = &after[end + 1..];
    }
    out
}

/// Label and annotation keys a template reads: all of a claim's metadata the cache keeps.
pub fn used_keys(template: &str, dialect: Dialect) -> (Vec<String>, Vec<String>) {
    let (mut labels, mut annotations) = (Vec::new(), Vec::new());
    if dialect == Dialect::PathPattern {
        for var in variables(template) {
            if let Some(k) = var.strip_prefix(".PVC.labels.") {
                labels.push(k.to_string());
            } else if let Some(k) = var.strip_prefix(".PVC.annotations.") {
                annotations.push(k.to_string());
            }
        }
    }
    (labels, annotations)
}

/// Why a template can render the same or nested directories for claims of different
/// namespaces, or `None` when it cannot: its first segment is the namespace alone, or it
/// ends each path with the PV name (unique per claim) and takes no annotation (the
/// only tenant value that may hold a `/`). The ownership check refuses such claims at
/// provisioning anyway; this is for telling the class's owner early.
pub fn collision_risk(template: &str, dialect: Dialect) -> Option<&'static str> {
    let (ns, pv) = match dialect {
        Dialect::PathPattern => (".PVC.namespace", ".PV.name"),
        Dialect::SubDir => ("pvc.metadata.namespace", "pv.metadata.name"),
    };
    let first = template.split('/').next().unwrap_or_default();
    let first_vars = variables(first);
    let namespace_first =
        first_vars == [ns] && first.trim().starts_with("${") && first.trim().ends_with('}');
    if namespace_first {
        return None;
    }
    let vars = variables(template);
    let takes_annotation = vars.iter().any(|v| v.starts_with(".PVC.annotations."));
    let tenant_values = vars.iter().any(|v| *v != ns && *v != pv);
    let last = template.rsplit('/').next().unwrap_or_default();
    let pv_last = variables(last).contains(&pv);
    if pv_last && !takes_annotation {
        return None;
    }
    Some(if tenant_values {
        "it takes values a tenant controls (claim name, labels or annotations) and does not start with the namespace as a path segment of its own"
    } else {
        "it does not start with the namespace as a path segment of its own, so claims of different namespaces can render the same directory"
    })
}

/// Checks a template's syntax and variable names without a claim, so a bad class is
/// reported as soon as it is used.
pub fn check_template(template: &str, dialect: Dialect) -> Result<(), TemplateError> {
    let empty = BTreeMap::new();
    let vars = TemplateVars {
        namespace: "ns",
        pvc_name: "claim",
        pv_name: "pv",
        labels: &empty,
        annotations: &empty,
    };
    match render(template, dialect, &vars) {
        Ok(_) | Err(TemplateError::MissingLabel(_)) | Err(TemplateError::MissingAnnotation(_)) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy-free ASCII path gives what normalising every path gives.
    #[test]
    fn compare_keys_are_nfc_and_lower_case_whatever_the_path() {
        use unicode_normalization::UnicodeNormalization;
        let paths = [
            "/srv/a",
            "/srv/A/Data/",
            "/srv//x//",
            "/srv/caf\u{e9}",
            "/srv/CAFE\u{301}/",
            "/srv/\u{c4}rger",
            "",
            "/",
        ];
        for p in paths {
            for case_insensitive in [false, true] {
                let nfc: String = p.trim_end_matches('/').nfc().collect();
                let want = if case_insensitive {
                    nfc.to_lowercase()
                } else {
                    nfc
                };
                assert_eq!(compare_key(p, case_insensitive), want, "{p:?}");
            }
        }
        assert!(matches!(
            compare_key("/srv/a/", false),
            Cow::Borrowed("/srv/a")
        ));
    }

    fn vars<'a>(
        labels: &'a BTreeMap<String, String>,
        ann: &'a BTreeMap<String, String>,
    ) -> TemplateVars<'a> {
        TemplateVars {
            namespace: "team-a",
            pvc_name: "data",
            pv_name: "pvc-1234",
            labels,
            annotations: ann,
        }
    }

    #[test]
    fn relpath_accepts_plain_and_nested() {
        let p = RelPath::parse("team-a/data").unwrap();
        assert_eq!(p.segments(), ["team-a", "data"]);
        assert_eq!(p.leaf(), "data");
        assert_eq!(p.parent_segments(), ["team-a"]);
        assert_eq!(p.to_string(), "team-a/data");
        assert_eq!(
            p.with_leaf("archived-data").unwrap().to_string(),
            "team-a/archived-data"
        );
    }

    #[test]
    fn relpath_refuses_everything_that_could_escape_or_name_the_root() {
        let long = "x".repeat(256);
        let deep = vec!["a"; 17].join("/");
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/etc", PathError::Absolute("/etc".into())),
            ("..", PathError::DotSegment("..".into())),
            ("a/../../etc", PathError::DotSegment("a/../../etc".into())),
            ("./a", PathError::DotSegment("./a".into())),
            ("a//b", PathError::EmptySegment("a//b".into())),
            ("a/", PathError::EmptySegment("a/".into())),
            ("a\0b", PathError::ControlChar),
            ("a\nb", PathError::ControlChar),
            (&deep, PathError::TooDeep),
        ];
        for (raw, want) in cases {
            assert_eq!(RelPath::parse(raw).unwrap_err(), *want, "input {raw:?}");
        }
        assert!(matches!(
            RelPath::parse(&long),
            Err(PathError::SegmentTooLong(_))
        ));
        assert_eq!(
            RelPath::parse(&"ab/".repeat(600)).unwrap_err(),
            PathError::TooLong
        );
    }

    #[test]
    fn the_metadata_directory_is_never_a_volume_or_an_archive() {
        for raw in [
            ".nfs3-provisioner",
            ".nfs3-provisioner/archives/x",
            ".NFS3-Provisioner/x",
        ] {
            assert_eq!(
                RelPath::parse(raw).unwrap_err(),
                PathError::Reserved(raw.into()),
                "{raw}"
            );
        }
        // Only as the first segment: elsewhere it is an ordinary name.
        assert!(RelPath::parse("team-a/.nfs3-provisioner").is_ok());
        assert!(RelPath::parse(".nfs3-provisioner-x").is_ok());
        // A template fed by a tenant's annotation cannot point a volume there either.
        let e = BTreeMap::new();
        let ann = BTreeMap::from([("p".to_string(), ".nfs3-provisioner/archives".to_string())]);
        let rendered = render(
            "${.PVC.annotations.p}",
            Dialect::PathPattern,
            &vars(&e, &ann),
        )
        .unwrap();
        assert!(matches!(
            RelPath::parse(&rendered),
            Err(PathError::Reserved(_))
        ));
        // Nor can an archive name built beside a volume in the share root.
        let vol = RelPath::parse("data").unwrap();
        assert!(vol.with_leaf(".nfs3-provisioner").is_err());
        let rec = RelPath::metadata(&["archives", "k"]).unwrap();
        assert_eq!(rec.to_string(), ".nfs3-provisioner/archives/k");
        assert_eq!(
            RelPath::metadata(&[]).unwrap().to_string(),
            ".nfs3-provisioner"
        );
        assert!(RelPath::metadata(&["..", "x"]).is_err());
        assert!(RelPath::metadata(&["a/b"]).is_ok());
    }

    #[test]
    fn share_is_normalized() {
        assert_eq!(normalize_share("/srv//nfs/").unwrap(), "/srv/nfs");
        assert_eq!(normalize_share("/").unwrap(), "/");
        assert!(normalize_share("srv").is_err());
        assert!(normalize_share("/srv/../etc").is_err());
    }

    #[test]
    fn path_pattern_variables() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let ann = BTreeMap::from([("nfs.io/storage-path".to_string(), "shared/web".to_string())]);
        let v = vars(&labels, &ann);
        let cases = [
            ("${.PVC.namespace}/${.PVC.name}", "team-a/data"),
            ("${.PVC.labels.app}-${.PV.name}", "web-pvc-1234"),
            ("${.PVC.annotations.nfs.io/storage-path}", "shared/web"),
            ("static", "static"),
            ("${ .PVC.name }", "data"),
        ];
        for (t, want) in cases {
            assert_eq!(
                render(t, Dialect::PathPattern, &v).unwrap(),
                want,
                "template {t}"
            );
        }
    }

    #[test]
    fn subdir_variables() {
        let e = BTreeMap::new();
        let v = vars(&e, &e);
        let got = render(
            "${pvc.metadata.namespace}/${pvc.metadata.name}/${pv.metadata.name}",
            Dialect::SubDir,
            &v,
        )
        .unwrap();
        assert_eq!(got, "team-a/data/pvc-1234");
    }

    #[test]
    fn template_errors_are_precise() {
        let e = BTreeMap::new();
        let v = vars(&e, &e);
        assert!(matches!(
            render("${.PVC.nope}", Dialect::PathPattern, &v),
            Err(TemplateError::UnknownVariable { .. })
        ));
        assert!(matches!(
            render("${pvc.metadata.name}", Dialect::PathPattern, &v),
            Err(TemplateError::UnknownVariable { .. })
        ));
        assert_eq!(
            render("${.PVC.labels.app}", Dialect::PathPattern, &v),
            Err(TemplateError::MissingLabel("app".into()))
        );
        assert_eq!(
            render("${.PVC.annotations.x}", Dialect::PathPattern, &v),
            Err(TemplateError::MissingAnnotation("x".into()))
        );
        assert!(matches!(
            render("${.PVC.name", Dialect::PathPattern, &v),
            Err(TemplateError::Unterminated(_))
        ));
        assert!(check_template("${.PVC.labels.app}", Dialect::PathPattern).is_ok());
        assert!(check_template("${.PVC.bogus}", Dialect::PathPattern).is_err());
    }

    #[test]
    fn hostile_annotation_values_render_but_never_parse() {
        let e = BTreeMap::new();
        for hostile in ["../../etc", "/etc/passwd", "a/../..", "a\0b", "", ".", "x/"] {
            let ann = BTreeMap::from([("p".to_string(), hostile.to_string())]);
            let v = vars(&e, &ann);
            let rendered = render("${.PVC.annotations.p}", Dialect::PathPattern, &v).unwrap();
            assert!(
                RelPath::parse(&rendered).is_err(),
                "{hostile:?} must be refused"
            );
        }
    }
}
