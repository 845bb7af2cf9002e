//! Blast-radius controls as pure rules: which kill switch covers a piece of
//! work, and what holds its release. The use-cases that turn switches on and
//! off live in `service::controls`.

use crate::records::{Breaker, Switch};

/// What a kill switch covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Tool,
    Tenant,
    Route,
}

stored_as_text!(Scope);

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Global, Scope::Tool, Scope::Tenant, Scope::Route];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Tool => "tool",
            Scope::Tenant => "tenant",
            Scope::Route => "route",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The first engaged switch covering this work, as `scope:target` (or `global`).
pub fn covering(switches: &[Switch], tenant: &str, route: &str, tool: &str) -> Option<String> {
    switches.iter().filter(|s| s.engaged).find_map(|s| {
        let hit = match s.scope {
            Scope::Global => true,
            Scope::Tool => s.target == tool,
            Scope::Tenant => s.target == tenant,
            Scope::Route => s.target == route,
        };
        hit.then(|| match s.scope {
            Scope::Global => "global".to_owned(),
            other => format!("{other}:{}", s.target),
        })
    })
}

/// Switches and breakers in force, read once per transaction.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    pub switches: Vec<Switch>,
    pub breakers: Vec<Breaker>,
}

impl Controls {
    /// What refuses new work: a kill switch.
    pub fn refusing(&self, tenant: &str, route: &str, tool: &str) -> Option<String> {
        covering(&self.switches, tenant, route, tool)
    }

    /// What holds release and claims: a kill switch or a tripped route breaker.
    pub fn holding(&self, tenant: &str, route: &str, tool: &str) -> Option<String> {
        self.refusing(tenant, route, tool).or_else(|| {
            self.breakers
                .iter()
                .find(|b| b.route == route)
                .map(|b| format!("breaker:{}", b.route))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sw(scope: Scope, target: &str, engaged: bool) -> Switch {
        Switch {
            scope,
            target: target.into(),
            engaged,
            reason: "r".into(),
            changed_by: "a".into(),
            changed_at: 0,
        }
    }

    #[test]
    fn each_scope_covers_only_its_target() {
        let s = [sw(Scope::Tool, "email.send", true), sw(Scope::Tenant, "acme", false)];
        assert_eq!(
            covering(&s, "acme", "support/send", "email.send").as_deref(),
            Some("tool:email.send")
        );
        assert_eq!(
            covering(&s, "acme", "support/send", "ticket.close"),
            None,
            "an off switch covers nothing"
        );
        let s = [sw(Scope::Route, "ops/triage", true)];
        assert_eq!(
            covering(&s, "acme", "ops/triage", "x").as_deref(),
            Some("route:ops/triage")
        );
        assert_eq!(covering(&s, "acme", "support/send", "x"), None);
        let s = [sw(Scope::Global, "", true)];
        assert_eq!(covering(&s, "t", "r", "x").as_deref(), Some("global"));
    }

    #[test]
    fn a_tripped_breaker_holds_release_but_refuses_nothing() {
        let c = Controls {
            switches: vec![],
            breakers: vec![Breaker {
                route: "ops/triage".into(),
                tripped_at: 0,
                reason: "r".into(),
            }],
        };
        assert_eq!(c.refusing("acme", "ops/triage", "alert.ack"), None);
        assert_eq!(
            c.holding("acme", "ops/triage", "alert.ack").as_deref(),
            Some("breaker:ops/triage")
        );
        assert_eq!(c.holding("acme", "support/send", "alert.ack"), None);
    }

    #[test]
    fn scopes_round_trip() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("planet"), None);
    }
}
