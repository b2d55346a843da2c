//! Does containerd's configuration send Kubernetes pods to this runtime, by both routes?
//!
//! The routes: a CRI runtime handler `kata` (`runtimeClassName: kata`) and one named
//! `untrusted` (pods annotated `io.kubernetes.cri.untrusted-workload: "true"`: containerd 2.x
//! sends them there, and so does 1.x when it has no `untrusted_workload_runtime`). Where the
//! handlers live depends on the configuration's `version`: 2 (containerd 1.6/1.7, also read by
//! 2.x) or 3 (containerd 2.x). The handlers to add are the files shipped in configs/containerd/.

use std::path::{Path, PathBuf};

use super::finding::Finding;

/// The runtime type containerd maps to this shim's binary name.
pub const RUNTIME_TYPE: &str = "io.containerd.kata.v2";

/// The runtime handler behind `runtimeClassName: kata`.
pub const KATA_HANDLER: &str = "kata";
/// The runtime handler containerd gives pods annotated [`UNTRUSTED_ANNOTATION`].
pub const UNTRUSTED_HANDLER: &str = "untrusted";
pub const UNTRUSTED_ANNOTATION: &str = "io.kubernetes.cri.untrusted-workload";
/// containerd 1.x's own setting for the untrusted-workload runtime (gone in 2.x).
const UNTRUSTED_WORKLOAD_RUNTIME: &str = "untrusted_workload_runtime";

/// The shipped handler snippets (configs/containerd/), shown as the fix.
pub const SNIPPET_V2: &str = include_str!("../../../configs/containerd/containerd-1.x.toml");
pub const SNIPPET_V3: &str = include_str!("../../../configs/containerd/containerd-2.x.toml");

/// A containerd configuration layout: which plugin holds the CRI runtime handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `version = 2`: containerd 1.6/1.7 (2.x migrates it when it starts).
    V2,
    /// `version = 3`: containerd 2.x only.
    V3,
}

impl Layout {
    pub fn version(self) -> i64 {
        match self {
            Layout::V2 => 2,
            Layout::V3 => 3,
        }
    }

    /// The plugin whose `containerd.runtimes` table this layout reads.
    pub fn runtime_plugin(self) -> &'static str {
        match self {
            Layout::V2 => "io.containerd.grpc.v1.cri",
            Layout::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    fn other(self) -> Layout {
        match self {
            Layout::V2 => Layout::V3,
            Layout::V3 => Layout::V2,
        }
    }

    fn readers(self) -> &'static str {
        match self {
            Layout::V2 => "containerd 1.6/1.7, and 2.x after migrating it",
            Layout::V3 => "containerd 2.x",
        }
    }

    /// The shipped snippet's table for `handler` (header and keys), as text to add.
    pub fn snippet_table(self, handler: &str) -> String {
        let text = match self {
            Layout::V2 => SNIPPET_V2,
            Layout::V3 => SNIPPET_V3,
        };
        let header = format!(
            "[plugins.\"{}\".containerd.runtimes.{handler}]",
            self.runtime_plugin()
        );
        text.lines()
            .skip_while(|l| l.trim() != header)
            .enumerate()
            .take_while(|(i, l)| *i == 0 || l.starts_with(' '))
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What a containerd configuration routes to this runtime, its `imports` included.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ContainerdRouting {
    pub layout: Option<Layout>,
    /// Runtime handlers with our runtime_type, in the table each file's layout reads.
    pub handlers: Vec<String>,
    /// containerd 1.x's `untrusted_workload_runtime` has our runtime_type.
    pub untrusted_workload_runtime: bool,
    /// Handlers with our runtime_type in the other layout's table, which containerd ignores.
    pub ignored: Vec<String>,
    /// Files read through `imports`, in order.
    pub imported: Vec<PathBuf>,
    /// Imported files that containerd cannot load (it then does not start).
    pub import_errors: Vec<String>,
    /// `imports` that do not do what the file seems to intend.
    pub import_warnings: Vec<String>,
    /// Imported files with a CRI plugin table of the version 2 layout while the main file has
    /// one too: containerd 1.x replaces the main file's whole table with theirs.
    pub cri_table_replaced_by: Vec<PathBuf>,
}

impl ContainerdRouting {
    pub fn has(&self, handler: &str) -> bool {
        self.handlers.iter().any(|h| h == handler)
    }

    fn layout(&self) -> Layout {
        self.layout.unwrap_or(Layout::V2)
    }
}

/// Why a containerd configuration could not be read as version 2 or 3.
#[derive(Debug, PartialEq, Eq)]
pub enum RoutingError {
    Syntax(String),
    /// `version` absent (= 1) or not 2/3.
    Version(String),
}

impl RoutingError {
    fn into_message(self) -> String {
        match self {
            RoutingError::Syntax(s) | RoutingError::Version(s) => s,
        }
    }
}

fn parse(text: &str) -> Result<toml::Value, RoutingError> {
    text.parse()
        .map_err(|e: toml::de::Error| RoutingError::Syntax(e.message().to_string()))
}

fn layout_of(doc: &toml::Value) -> Result<Option<Layout>, RoutingError> {
    match doc.get("version") {
        Some(toml::Value::Integer(2)) => Ok(Some(Layout::V2)),
        Some(toml::Value::Integer(3)) => Ok(Some(Layout::V3)),
        Some(v) => Err(RoutingError::Version(format!("version = {v}"))),
        None => Ok(None),
    }
}

fn cri_table(doc: &toml::Value, l: Layout) -> Option<&toml::Value> {
    doc.get("plugins").and_then(|p| p.get(l.runtime_plugin()))
}

/// Our handlers in `doc`'s table of layout `l`.
fn our_handlers(doc: &toml::Value, l: Layout) -> Vec<String> {
    cri_table(doc, l)
        .and_then(|p| p.get("containerd"))
        .and_then(|c| c.get("runtimes"))
        .and_then(|r| r.as_table())
        .into_iter()
        .flatten()
        .filter(|(_, rt)| rt.get("runtime_type").and_then(|t| t.as_str()) == Some(RUNTIME_TYPE))
        .map(|(name, _)| name.clone())
        .collect()
}

impl ContainerdRouting {
    /// Adds one file's handlers, read in layout `l`.
    fn add(&mut self, doc: &toml::Value, l: Layout) {
        self.handlers.extend(our_handlers(doc, l));
        self.ignored.extend(our_handlers(doc, l.other()));
        self.untrusted_workload_runtime |= cri_table(doc, l)
            .and_then(|p| p.get("containerd"))
            .and_then(|c| c.get(UNTRUSTED_WORKLOAD_RUNTIME))
            .and_then(|u| u.get("runtime_type"))
            .and_then(|t| t.as_str())
            == Some(RUNTIME_TYPE);
        for v in [&mut self.handlers, &mut self.ignored] {
            v.sort();
            v.dedup();
        }
    }
}

/// Tables holding an `imports` key: containerd reads `imports` only before the first table
/// (a line appended at the end of a file lands in its last table).
fn nested_imports(v: &toml::Value, at: &str, out: &mut Vec<String>) {
    let Some(t) = v.as_table() else { return };
    for (k, v) in t {
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        if k == "imports" && !at.is_empty() {
            out.push(at.to_string());
        }
        nested_imports(v, &path, out);
    }
}

/// The files an `imports` entry names: relative to `dir`, `*` in the file name as a glob.
fn import_paths(dir: &Path, entry: &str) -> Vec<PathBuf> {
    let p = dir.join(entry);
    let name = p.file_name().map(|n| n.to_string_lossy().to_string());
    match (name, p.parent()) {
        (Some(name), Some(parent)) if name.contains('*') => {
            let mut found: Vec<PathBuf> = std::fs::read_dir(parent)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| crate::config::glob_matches(&name, &e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect();
            found.sort();
            found
        }
        _ => vec![p],
    }
}

/// Reads the CRI runtime handlers of one configuration text, without following `imports`.
pub fn routing(text: &str) -> Result<ContainerdRouting, RoutingError> {
    routing_at(Path::new(""), text)
}

/// Reads the CRI runtime handlers of the configuration at `path` (its text already read),
/// following its `imports` as containerd does.
pub fn routing_at(path: &Path, text: &str) -> Result<ContainerdRouting, RoutingError> {
    let doc = parse(text)?;
    let layout =
        layout_of(&doc)?.ok_or_else(|| RoutingError::Version("no version (= version 1)".into()))?;
    let mut r = ContainerdRouting {
        layout: Some(layout),
        ..Default::default()
    };
    r.add(&doc, layout);
    let mut nested = Vec::new();
    nested_imports(&doc, "", &mut nested);
    for at in nested {
        r.import_warnings.push(format!(
            "`imports` is inside the table [{at}], so containerd does not read it: put it above the first table"
        ));
    }
    if path.as_os_str().is_empty() {
        return Ok(r);
    }
    let mut queue: Vec<(PathBuf, toml::Value)> = vec![(path.to_path_buf(), doc)];
    let mut seen = vec![path.to_path_buf()];
    let main_has_cri_v2 = cri_table(&queue[0].1, Layout::V2).is_some();
    while let Some((file, doc)) = queue.pop() {
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let entries = doc
            .get("imports")
            .and_then(|i| i.as_array())
            .cloned()
            .unwrap_or_default();
        for entry in entries.iter().filter_map(|e| e.as_str()) {
            let files = import_paths(&dir, entry);
            if files.is_empty() || (!entry.contains('*') && !files[0].exists()) {
                r.import_warnings.push(format!(
                    "imports names {entry}, which matches no file (containerd skips it)"
                ));
                continue;
            }
            for f in files {
                if seen.contains(&f) {
                    continue;
                }
                seen.push(f.clone());
                let imported = std::fs::read_to_string(&f)
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse(&t).map_err(RoutingError::into_message))
                    .and_then(|d| {
                        let l = layout_of(&d).map_err(RoutingError::into_message)?;
                        Ok((d, l))
                    });
                match imported {
                    Err(e) => r
                        .import_errors
                        .push(format!("imported {}: {e}", f.display())),
                    Ok((d, l)) => {
                        let l = l.unwrap_or(layout);
                        r.add(&d, l);
                        if l == Layout::V2 && main_has_cri_v2 && cri_table(&d, Layout::V2).is_some()
                        {
                            r.cri_table_replaced_by.push(f.clone());
                        }
                        r.imported.push(f.clone());
                        queue.push((f, d));
                    }
                }
            }
        }
    }
    Ok(r)
}

/// The major version in `containerd --version` output ("containerd github.com/... 1.6.20 ...").
pub fn containerd_major(version_output: &str) -> Option<u32> {
    version_output
        .split_whitespace()
        .nth(2)?
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// How to add the runtime handler `handler` to a configuration with `layout`.
fn add_fix(layout: Layout, handler: &str) -> String {
    let how = match layout {
        Layout::V2 => "append to containerd's config (not through `imports`: containerd 1.x would replace its whole CRI table)",
        Layout::V3 => "add to containerd's config, or list the shipped file in its `imports`",
    };
    format!(
        "{how}, then restart containerd (docs/kubernetes.md; `make install` ships this as {}):\n{}",
        match layout {
            Layout::V2 => "containerd-1.x.toml",
            Layout::V3 => "containerd-2.x.toml",
        },
        layout.snippet_table(handler)
    )
}

/// How to add both runtime handlers.
fn both_fix(layout: Layout) -> String {
    format!(
        "{}\n{}",
        add_fix(layout, KATA_HANDLER),
        layout.snippet_table(UNTRUSTED_HANDLER)
    )
}

/// The findings for containerd's configuration at `path`; `major` is the installed
/// containerd's major version, when known.
pub fn config_findings(path: &Path, major: Option<u32>) -> Vec<Finding> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return vec![Finding::fail(
                "containerd config",
                format!("{}: {e}", path.display()),
                format!(
                    "write one (`containerd config default > {}`), then {}",
                    path.display(),
                    both_fix(if major == Some(1) {
                        Layout::V2
                    } else {
                        Layout::V3
                    })
                ),
            )]
        }
    };
    findings(path, &text, major)
}

/// [`config_findings`] on text already read.
pub fn findings(path: &Path, text: &str, major: Option<u32>) -> Vec<Finding> {
    let p = path.display();
    let r = match routing_at(path, text) {
        Ok(r) => r,
        Err(RoutingError::Syntax(e)) => {
            return vec![Finding::fail(
                "containerd config",
                format!("{p}: not valid TOML: {e}"),
                "fix the file's syntax",
            )]
        }
        Err(RoutingError::Version(v)) => {
            return vec![Finding::fail(
                "containerd config",
                format!("{p}: {v}; kata-ctl reads version 2 (containerd 1.6/1.7) and 3 (2.x) configurations"),
                "rewrite it in a current layout: `containerd config default` prints one \
                 (containerd 2.x: `containerd config migrate` converts an old file)",
            )]
        }
    };
    let layout = r.layout();
    let mut out = Vec::new();
    if layout == Layout::V3 && major == Some(1) {
        out.push(Finding::fail(
            "containerd config",
            format!(
                "{p}: version 3, which the installed containerd 1.x does not read (its CRI \
                 handlers are in plugin {})",
                Layout::V2.runtime_plugin()
            ),
            format!("use a version 2 configuration; {}", both_fix(Layout::V2)),
        ));
    } else {
        out.push(Finding::ok(
            "containerd config",
            format!(
                "{p}: version {} ({}), handlers in plugin {}{}",
                layout.version(),
                layout.readers(),
                layout.runtime_plugin(),
                if r.imported.is_empty() {
                    String::new()
                } else {
                    let files: Vec<String> =
                        r.imported.iter().map(|f| f.display().to_string()).collect();
                    format!("; imports {}", files.join(", "))
                }
            ),
        ));
    }
    const IMPORTS: &str = "containerd imports";
    for e in &r.import_errors {
        out.push(Finding::fail(
            IMPORTS,
            format!("{p}: {e}: containerd does not start with it"),
            "fix or remove the imported file",
        ));
    }
    for w in &r.import_warnings {
        out.push(Finding::warn(
            IMPORTS,
            format!("{p}: {w}"),
            "correct `imports`",
        ));
    }
    if major != Some(2) {
        for f in &r.cri_table_replaced_by {
            out.push(Finding::warn(
                IMPORTS,
                format!(
                    "{p} and its import {} both have a [plugins.\"{}\"] table: containerd 1.x \
                     keeps only the imported one, dropping the main file's other CRI settings \
                     (containerd 2.x merges them)",
                    f.display(),
                    Layout::V2.runtime_plugin()
                ),
                format!("on containerd 1.x, append the handlers to {p} instead of importing them"),
            ));
        }
    }
    let misplaced = |handler: &str| {
        if r.ignored.iter().any(|h| h == handler) {
            format!(
                "; runtimes.{handler} is under plugin {}, which a version {} configuration does not read",
                layout.other().runtime_plugin(),
                layout.version()
            )
        } else {
            String::new()
        }
    };

    if r.has(KATA_HANDLER) {
        out.push(Finding::ok(
            "containerd kata",
            format!(
                "runtime handler(s) {:?} use {RUNTIME_TYPE} (runtimeClassName: {KATA_HANDLER})",
                r.handlers
            ),
        ));
    } else {
        out.push(Finding::fail(
            "containerd kata",
            format!(
                "{p}: no runtime handler \"{KATA_HANDLER}\" with runtime_type {RUNTIME_TYPE} \
                 (found {:?}): pods with runtimeClassName: {KATA_HANDLER} cannot start{}",
                r.handlers,
                misplaced(KATA_HANDLER)
            ),
            add_fix(layout, KATA_HANDLER),
        ));
    }

    let uwr = r.untrusted_workload_runtime;
    let untrusted = "containerd untrusted";
    out.push(match (r.has(UNTRUSTED_HANDLER), uwr, layout) {
        (true, true, Layout::V2) => Finding::fail(
            untrusted,
            format!(
                "{p}: both {UNTRUSTED_WORKLOAD_RUNTIME} and runtimes.{UNTRUSTED_HANDLER} are set: \
                 containerd 1.x then refuses to load its CRI plugin (\"conflicting definitions\")"
            ),
            format!(
                "remove the {UNTRUSTED_WORKLOAD_RUNTIME} table; keep runtimes.{UNTRUSTED_HANDLER}"
            ),
        ),
        (true, _, _) => Finding::ok(
            untrusted,
            format!(
                "pods annotated {UNTRUSTED_ANNOTATION} run in VMs (runtime handler \
                 \"{UNTRUSTED_HANDLER}\", read by containerd 1.x and 2.x)"
            ),
        ),
        (false, true, Layout::V2) => Finding::warn(
            untrusted,
            format!(
                "{p}: pods annotated {UNTRUSTED_ANNOTATION} reach {RUNTIME_TYPE} only through \
                 {UNTRUSTED_WORKLOAD_RUNTIME}, which containerd 1.x reads but 2.x ignores (it \
                 removed that setting and looks for a runtime handler \"{UNTRUSTED_HANDLER}\")"
            ),
            format!(
                "replace the {UNTRUSTED_WORKLOAD_RUNTIME} table with runtimes.{UNTRUSTED_HANDLER} \
                 (both set stop containerd 1.x's CRI plugin); {}",
                add_fix(layout, UNTRUSTED_HANDLER)
            ),
        ),
        (false, true, Layout::V3) => Finding::fail(
            untrusted,
            format!(
                "{p}: {UNTRUSTED_WORKLOAD_RUNTIME} is set, but containerd 2.x ignores it: pods \
                 annotated {UNTRUSTED_ANNOTATION} need a runtime handler \"{UNTRUSTED_HANDLER}\""
            ),
            add_fix(layout, UNTRUSTED_HANDLER),
        ),
        (false, false, _) => Finding::fail(
            untrusted,
            format!(
                "{p}: no runtime handler \"{UNTRUSTED_HANDLER}\" with runtime_type {RUNTIME_TYPE}: \
                 pods annotated {UNTRUSTED_ANNOTATION} do not run in VMs{}",
                misplaced(UNTRUSTED_HANDLER)
            ),
            add_fix(layout, UNTRUSTED_HANDLER),
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::finding::Status;

    /// Debian's containerd 1.6 package ships this /etc/containerd/config.toml.
    const DEBIAN_CONFIG: &str = r#"version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"#;

    fn check(text: &str, major: Option<u32>) -> Vec<Finding> {
        findings(Path::new("/etc/containerd/config.toml"), text, major)
    }

    fn get<'a>(f: &'a [Finding], what: &str) -> &'a Finding {
        f.iter()
            .find(|f| f.what == what)
            .unwrap_or_else(|| panic!("no finding {what}: {f:#?}"))
    }

    fn fix(f: &Finding) -> &str {
        f.fix.as_deref().unwrap_or_default()
    }

    /// A handler table of ours in the layout `l` reads.
    fn table(l: Layout, handler: &str) -> String {
        format!(
            "[plugins.\"{}\".containerd.runtimes.{handler}]\n  runtime_type = \"{RUNTIME_TYPE}\"\n",
            l.runtime_plugin()
        )
    }

    fn v2_table(handler: &str) -> String {
        table(Layout::V2, handler)
    }

    fn v3_table(handler: &str) -> String {
        table(Layout::V3, handler)
    }

    const UWR_V2: &str = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.untrusted_workload_runtime]\n  runtime_type = \"io.containerd.kata.v2\"\n";

    #[test]
    fn shipped_snippets_route_both_handlers() {
        // containerd 1.x: the snippet appended to Debian's config, as docs/kubernetes.md says.
        let v2 = format!("{DEBIAN_CONFIG}\n{SNIPPET_V2}");
        let r = routing(&v2).expect("valid");
        assert_eq!(r.layout, Some(Layout::V2));
        assert_eq!(r.handlers, vec!["kata", "untrusted"]);
        assert!(!r.untrusted_workload_runtime);
        let f = check(&v2, Some(1));
        assert!(f.iter().all(|f| f.status == Status::Ok), "{f:#?}");

        // containerd 2.x: the snippet on its own (imported) and appended to a version 3 file.
        for v3 in [
            SNIPPET_V3.to_string(),
            format!(
                "version = 3\n{}\n{}",
                Layout::V3.snippet_table(KATA_HANDLER),
                Layout::V3.snippet_table(UNTRUSTED_HANDLER)
            ),
        ] {
            let r = routing(&v3).expect("valid");
            assert_eq!(r.layout, Some(Layout::V3));
            assert_eq!(r.handlers, vec!["kata", "untrusted"]);
            let f = check(&v3, Some(2));
            assert!(f.iter().all(|f| f.status == Status::Ok), "{f:#?}");
            assert!(get(&f, "containerd config").detail.contains("version 3"));
        }
        // A version 2 file is read by containerd 2.x too.
        let f = check(&v2, Some(2));
        assert!(f.iter().all(|f| f.status == Status::Ok), "{f:#?}");
    }

    #[test]
    fn only_kata_names_the_missing_untrusted_route() {
        for text in [
            format!("version = 2\n{}", v2_table("kata")),
            format!("version = 3\n{}", v3_table("kata")),
        ] {
            let f = check(&text, None);
            assert_eq!(get(&f, "containerd kata").status, Status::Ok);
            let u = get(&f, "containerd untrusted");
            assert_eq!(u.status, Status::Fail, "{text}");
            assert!(
                u.detail.contains("no runtime handler \"untrusted\"")
                    && u.detail.contains(UNTRUSTED_ANNOTATION),
                "{}",
                u.detail
            );
            assert!(
                fix(u).contains("runtimes.untrusted]") && !fix(u).contains("runtimes.kata]"),
                "the fix shows the one table to add (kata's again would not parse): {u:?}"
            );
        }
    }

    #[test]
    fn untrusted_workload_runtime_is_named_as_ignored_by_containerd_2() {
        // Version 2: works on containerd 1.x, not on 2.x.
        let text = format!("version = 2\n{}{UWR_V2}", v2_table("kata"));
        let u = check(&text, Some(1)).remove(2);
        assert_eq!(u.what, "containerd untrusted");
        assert_eq!(u.status, Status::Warn);
        assert!(u.detail.contains("2.x ignores"), "{}", u.detail);
        assert!(fix(&u).contains("runtimes.untrusted]"));

        // Version 3: containerd 2.x only, so the setting routes nothing.
        let text = format!(
            "version = 3\n{}{}",
            v3_table("kata"),
            UWR_V2.replace("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime")
        );
        let u = check(&text, Some(2)).remove(2);
        assert_eq!(u.status, Status::Fail);
        assert!(
            u.detail.contains("containerd 2.x ignores it"),
            "{}",
            u.detail
        );
    }

    #[test]
    fn both_untrusted_settings_are_refused_as_containerd_1_refuses_them() {
        let text = format!(
            "version = 2\n{}{}{UWR_V2}",
            v2_table("kata"),
            v2_table("untrusted")
        );
        let u = check(&text, Some(1)).remove(2);
        assert_eq!(u.status, Status::Fail);
        assert!(u.detail.contains("conflicting definitions"), "{}", u.detail);
    }

    #[test]
    fn handlers_in_the_other_layout_are_named_as_not_read() {
        // Version 2 with 2.x's plugin name: containerd never sees these handlers.
        let text = format!("version = 2\n{}{}", v3_table("kata"), v3_table("untrusted"));
        let r = routing(&text).expect("valid");
        assert!(r.handlers.is_empty());
        assert_eq!(r.ignored, vec!["kata", "untrusted"]);
        let f = check(&text, None);
        let k = get(&f, "containerd kata");
        assert_eq!(k.status, Status::Fail);
        assert!(
            k.detail.contains("io.containerd.cri.v1.runtime")
                && k.detail.contains("version 2 configuration does not read"),
            "{}",
            k.detail
        );
        assert!(fix(k).contains("io.containerd.grpc.v1.cri"));

        // Version 3 with 1.x's plugin name.
        let text = format!("version = 3\n{}", v2_table("kata"));
        let k = check(&text, Some(2)).remove(1);
        assert_eq!(k.status, Status::Fail);
        assert!(
            k.detail.contains("version 3 configuration does not read"),
            "{}",
            k.detail
        );
        assert!(fix(&k).contains("io.containerd.cri.v1.runtime"));
    }

    #[test]
    fn version_3_on_containerd_1_fails() {
        let f = check(SNIPPET_V3, Some(1));
        let c = get(&f, "containerd config");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("does not read"), "{}", c.detail);
        assert!(fix(c).contains("io.containerd.grpc.v1.cri"));
    }

    #[test]
    fn unreadable_configs_are_one_failure() {
        for (text, says) in [
            ("[[[", "not valid TOML"),
            ("[plugins]\n", "no version"),
            ("version = 1\n", "version = 1"),
        ] {
            let f = check(text, None);
            assert_eq!(f.len(), 1, "{f:#?}");
            assert_eq!(f[0].status, Status::Fail);
            assert!(f[0].detail.contains(says), "{}", f[0].detail);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = config_findings(&dir.path().join("nope.toml"), Some(2));
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].status, Status::Fail);
        assert!(missing[0].detail.contains("nope.toml"));
        assert!(fix(&missing[0]).contains("cri.v1.runtime"));
    }

    /// `main` as config.toml in a temporary directory with `files` beside it.
    fn check_dir(main: &str, files: &[(&str, &str)], major: Option<u32>) -> Vec<Finding> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, body) in files {
            let f = dir.path().join(name);
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
            std::fs::write(f, body).expect("write");
        }
        let p = dir.path().join("config.toml");
        std::fs::write(&p, main).expect("write");
        config_findings(&p, major)
    }

    #[test]
    fn imports_are_followed_as_containerd_2_merges_them() {
        // The documented containerd 2.x route: the shipped file in `imports`, by path or glob.
        for entry in ["kata.toml", "conf.d/*.toml"] {
            let main = format!("version = 3\nimports = [\"{entry}\"]\n");
            let f = check_dir(
                &main,
                &[("kata.toml", SNIPPET_V3), ("conf.d/kata.toml", SNIPPET_V3)],
                Some(2),
            );
            assert!(f.iter().all(|f| f.status == Status::Ok), "{entry}: {f:#?}");
            assert!(
                get(&f, "containerd config").detail.contains("; imports "),
                "{f:#?}"
            );
        }
        // Without the import, nothing routes.
        let f = check_dir("version = 3\n", &[("kata.toml", SNIPPET_V3)], Some(2));
        assert_eq!(get(&f, "containerd kata").status, Status::Fail);
    }

    #[test]
    fn imports_appended_below_a_table_are_named_as_not_read() {
        let main = format!("{DEBIAN_CONFIG}imports = [\"kata.toml\"]\n");
        let f = check_dir(&main, &[("kata.toml", SNIPPET_V2)], Some(1));
        let w = get(&f, "containerd imports");
        assert_eq!(w.status, Status::Warn);
        assert!(
            w.detail
                .contains("inside the table [plugins.io.containerd.internal.v1.opt]"),
            "{}",
            w.detail
        );
        assert_eq!(get(&f, "containerd kata").status, Status::Fail);
    }

    #[test]
    fn containerd_1_replacing_the_cri_table_through_imports_is_named() {
        let imported = format!("version = 2\n{SNIPPET_V2}");
        let main =
            DEBIAN_CONFIG.replace("version = 2\n", "version = 2\nimports = [\"kata.toml\"]\n");
        let f = check_dir(&main, &[("kata.toml", &imported)], Some(1));
        let w = get(&f, "containerd imports");
        assert_eq!(w.status, Status::Warn);
        assert!(
            w.detail.contains("keeps only the imported one"),
            "{}",
            w.detail
        );
        assert!(fix(w).contains("append"));
        assert_eq!(get(&f, "containerd kata").status, Status::Ok);
        // containerd 2.x merges: no warning.
        let f = check_dir(&main, &[("kata.toml", &imported)], Some(2));
        assert!(f.iter().all(|f| f.status == Status::Ok), "{f:#?}");
    }

    #[test]
    fn missing_and_broken_imports_are_named() {
        let f = check_dir("version = 3\nimports = [\"nope.toml\"]\n", &[], Some(2));
        let w = get(&f, "containerd imports");
        assert_eq!(w.status, Status::Warn);
        assert!(
            w.detail.contains("nope.toml, which matches no file"),
            "{}",
            w.detail
        );

        let f = check_dir(
            "version = 3\nimports = [\"bad.toml\"]\n",
            &[("bad.toml", "[[[")],
            Some(2),
        );
        let e = get(&f, "containerd imports");
        assert_eq!(e.status, Status::Fail);
        assert!(e.detail.contains("bad.toml"), "{}", e.detail);
    }

    #[test]
    fn containerd_major_reads_1_x_and_2_x_version_lines() {
        assert_eq!(
            containerd_major(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
            ),
            Some(1)
        );
        assert_eq!(
            containerd_major("containerd github.com/containerd/containerd/v2 v2.1.9 abc"),
            Some(2)
        );
        assert_eq!(containerd_major("containerd"), None);
    }

    #[test]
    fn snippet_table_is_one_handler_table_of_the_shipped_file() {
        for l in [Layout::V2, Layout::V3] {
            for h in [KATA_HANDLER, UNTRUSTED_HANDLER] {
                let t = l.snippet_table(h);
                let header = format!(
                    "[plugins.\"{}\".containerd.runtimes.{h}]",
                    l.runtime_plugin()
                );
                assert!(t.starts_with(&header), "{t}");
                assert_eq!(t.matches("[plugins").count(), 1, "{t}");
                assert!(!t.contains('#'), "{t}");
                for key in [
                    format!("runtime_type = \"{RUNTIME_TYPE}\""),
                    "pod_annotations = [\"io.katacontainers.*\"]".to_string(),
                    "privileged_without_host_devices = true".to_string(),
                ] {
                    assert!(t.contains(&key), "{key} in {t}");
                }
            }
        }
    }
}
