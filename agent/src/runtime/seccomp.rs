//! OCI seccomp profiles -> BPF, with rust-vmm's seccompiler (pure Rust; its JSON frontend
//! knows the syscall numbers of x86_64 and aarch64).
//!
//! A seccompiler filter has one match and one mismatch action, an OCI profile one action per
//! rule. The kernel runs every installed filter and keeps the most restrictive result, so the
//! profile becomes several filters:
//!   base:       every listed syscall (with its conditions) -> allow, anything else -> default
//!   per action: the syscalls with that action -> action, anything else -> allow
//! A listed syscall gets min(allow, its action) = its action; an unlisted one the default.
use std::collections::{BTreeMap, HashSet};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{BpfProgram, TargetArch};
use serde_json::{json, Value};

/// The compiled filters, ready to install.
pub struct Program(Vec<BpfProgram>);

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

const EPERM: u32 = libc::EPERM as u32;

/// seccompiler's JSON action for an OCI action.
fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<Value, String> {
    use LinuxSeccompAction::*;
    Ok(match a {
        ScmpActAllow => json!("allow"),
        ScmpActErrno => json!({ "errno": errno.unwrap_or(EPERM) }),
        ScmpActKill | ScmpActKillThread => json!("kill_thread"),
        ScmpActKillProcess => json!("kill_process"),
        ScmpActTrap => json!("trap"),
        ScmpActLog => json!("log"),
        ScmpActTrace => json!({ "trace": errno.unwrap_or(EPERM) }),
        #[allow(unreachable_patterns)]
        other => return Err(format!("seccomp action {other:?} is not supported")),
    })
}

fn condition(arg: &oci_spec::runtime::LinuxSeccompArg) -> Value {
    use LinuxSeccompOperator::*;
    let (op, val) = match arg.op() {
        ScmpCmpNe => (json!("ne"), arg.value()),
        ScmpCmpLt => (json!("lt"), arg.value()),
        ScmpCmpLe => (json!("le"), arg.value()),
        ScmpCmpEq => (json!("eq"), arg.value()),
        ScmpCmpGe => (json!("ge"), arg.value()),
        ScmpCmpGt => (json!("gt"), arg.value()),
        // libseccomp: (arg & value) == valueTwo
        ScmpCmpMaskedEq => (
            json!({ "masked_eq": arg.value() }),
            arg.value_two().unwrap_or(0),
        ),
    };
    json!({ "index": arg.index(), "type": "qword", "op": op, "val": val })
}

/// Whether seccompiler knows `name` on this arch (profiles list syscalls of every arch).
fn known(name: &str) -> bool {
    let probe = json!({ "p": { "mismatch_action": "allow", "match_action": "trap",
                               "filter": [{ "syscall": name }] } });
    seccompiler::compile_from_json(probe.to_string().as_bytes(), ARCH).is_ok()
}

/// Rules of one filter: syscall name -> conditions (None = unconditional).
type Rules = BTreeMap<String, Option<Vec<Vec<Value>>>>;

fn add_rule(rules: &mut Rules, name: &str, conds: Vec<Value>) {
    let entry = rules
        .entry(name.to_string())
        .or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), conds.is_empty()) {
        (None, _) => {} // already unconditional
        (Some(_), true) => *entry = None,
        (Some(list), false) => list.push(conds),
    }
}

fn filter_json(rules: &Rules, mismatch: &Value, matched: &Value) -> Value {
    let mut list = Vec::new();
    for (name, conds) in rules {
        match conds {
            None => list.push(json!({ "syscall": name })),
            Some(cs) => {
                for c in cs {
                    list.push(json!({ "syscall": name, "args": c }));
                }
            }
        }
    }
    json!({ "mismatch_action": mismatch, "match_action": matched, "filter": list })
}

/// The seccompiler JSON documents (one per filter) for a profile.
pub fn translate(spec: &LinuxSeccomp) -> Result<Vec<Value>, String> {
    let default = action(spec.default_action(), spec.default_errno_ret())?;
    let allow = json!("allow");
    let mut base = Rules::new();
    let mut by_action: Vec<(Value, Rules)> = Vec::new();
    let mut checked: HashSet<String> = HashSet::new();
    let mut unknown: HashSet<String> = HashSet::new();
    for sc in spec.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        let conds: Vec<Value> = sc.args().iter().flatten().map(condition).collect();
        for name in names(sc) {
            if !checked.contains(name) {
                checked.insert(name.clone());
                if !known(name) {
                    unknown.insert(name.clone());
                }
            }
            if unknown.contains(name) {
                continue;
            }
            add_rule(&mut base, name, conds.clone());
            if act != allow {
                match by_action.iter_mut().find(|(a, _)| *a == act) {
                    Some((_, r)) => add_rule(r, name, conds.clone()),
                    None => {
                        let mut r = Rules::new();
                        add_rule(&mut r, name, conds.clone());
                        by_action.push((act.clone(), r));
                    }
                }
            }
        }
    }
    let mut filters = Vec::new();
    if default != allow {
        filters.push(filter_json(&base, &default, &allow));
    }
    for (act, rules) in &by_action {
        filters.push(filter_json(rules, &allow, act));
    }
    Ok(filters)
}

fn names(sc: &LinuxSyscall) -> &[String] {
    sc.names()
}

pub fn compile(spec: &LinuxSeccomp) -> Result<Program, String> {
    let mut progs = Vec::new();
    for (i, f) in translate(spec)?.into_iter().enumerate() {
        let doc = json!({ format!("f{i}"): f });
        let mut map = seccompiler::compile_from_json(doc.to_string().as_bytes(), ARCH)
            .map_err(|e| format!("compiling the seccomp profile: {e}"))?;
        if let Some(p) = map.remove(&format!("f{i}")) {
            progs.push(p);
        }
    }
    Ok(Program(progs))
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const seccompiler::sock_filter,
}

/// Installs the filters on this thread. Needs no_new_privs or CAP_SYS_ADMIN.
pub fn install(prog: &Program) -> Result<(), String> {
    for p in &prog.0 {
        let fprog = SockFprog {
            len: p.len() as u16,
            filter: p.as_ptr(),
        };
        // SAFETY: the kernel copies the program; fprog points at live memory for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const SockFprog,
            )
        };
        if rc != 0 {
            return Err(format!(
                "installing the seccomp filter: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn allow_list_with_errno_and_unknown_names() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
                "syscalls":[
                  {"names":["read","write","no_such_syscall"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                   "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                  {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        );
        let f = translate(&p).unwrap();
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(f[0]["mismatch_action"], json!({"errno": 38}));
        assert_eq!(f[0]["match_action"], json!("allow"));
        let base = f[0]["filter"].as_array().unwrap();
        assert!(base.iter().all(|r| r["syscall"] != "no_such_syscall"));
        assert!(base.iter().any(|r| r["syscall"] == "personality"
            && r["args"][0] == json!({"index":0,"type":"qword","op":"eq","val":8})));
        assert_eq!(f[1]["match_action"], json!({"errno": 1}));
        assert_eq!(f[1]["mismatch_action"], json!("allow"));
        assert!(compile(&p).is_ok());
    }

    #[test]
    fn deny_list_and_masked_eq() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["clone"],"action":"SCMP_ACT_KILL_PROCESS",
                  "args":[{"index":0,"value":268435456,"valueTwo":268435456,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        let f = translate(&p).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0]["match_action"], json!("kill_process"));
        assert_eq!(
            f[0]["filter"][0]["args"][0]["op"],
            json!({"masked_eq": 268435456})
        );
        assert!(compile(&p).is_ok());
    }

    #[test]
    fn unconditional_rule_wins() {
        let mut r = Rules::new();
        add_rule(&mut r, "x", vec![json!(1)]);
        add_rule(&mut r, "x", vec![]);
        add_rule(&mut r, "x", vec![json!(2)]);
        assert_eq!(r["x"], None);
    }
}
