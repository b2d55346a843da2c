//! One line of a `kata-ctl check` report: what was checked, how it went, and the fix.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, but not the way a user wants in production (e.g. TCG instead of KVM).
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub what: &'static str,
    pub status: Status,
    pub detail: String,
    /// How to fix it, for Warn and Fail.
    pub fix: Option<String>,
}

impl Finding {
    pub(crate) fn ok(what: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            what,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    pub(crate) fn warn(
        what: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::with_fix(what, Status::Warn, detail.into(), fix.into())
    }
    pub(crate) fn fail(
        what: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::with_fix(what, Status::Fail, detail.into(), fix.into())
    }
    fn with_fix(what: &'static str, status: Status, detail: String, fix: String) -> Self {
        Finding {
            what,
            status,
            detail,
            fix: Some(fix),
        }
    }
}
