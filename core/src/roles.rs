//! What a person may do: review, audit, administer. Stored one row per
//! person and role.

/// One role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Reviewer,
    Auditor,
    Admin,
}

stored_as_text!(Role);

impl Role {
    pub const ALL: [Role; 3] = [Role::Reviewer, Role::Auditor, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reviewer => "reviewer",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The roles a person holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    pub reviewer: bool,
    pub auditor: bool,
    pub admin: bool,
}

impl Roles {
    /// Roles named in a list whose items may themselves be comma-separated
    /// (`["reviewer,auditor", "admin"]`); at least one.
    pub fn parse(list: &[String]) -> Result<Roles, String> {
        let mut r = Roles::default();
        for item in list.iter().flat_map(|s| s.split(',')).map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let role =
                Role::parse(item).ok_or_else(|| format!("unknown role {item:?}: use reviewer, auditor or admin"))?;
            r.grant(role);
        }
        if r == Roles::default() {
            return Err("give at least one role: reviewer, auditor or admin".into());
        }
        Ok(r)
    }

    pub fn grant(&mut self, role: Role) {
        match role {
            Role::Reviewer => self.reviewer = true,
            Role::Auditor => self.auditor = true,
            Role::Admin => self.admin = true,
        }
    }

    pub fn has(&self, role: Role) -> bool {
        match role {
            Role::Reviewer => self.reviewer,
            Role::Auditor => self.auditor,
            Role::Admin => self.admin,
        }
    }

    pub fn list(&self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| self.has(*r)).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.list().into_iter().map(|r| r.as_str().to_owned()).collect()
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        let mut r = Roles::default();
        for role in iter {
            r.grant(role);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_lists_and_comma_lists() {
        let r = Roles::parse(&["reviewer,auditor".into(), " admin ".into()]).unwrap();
        assert_eq!(r.list(), vec![Role::Reviewer, Role::Auditor, Role::Admin]);
        assert!(Roles::parse(&["root".into()]).unwrap_err().contains("unknown role"));
        assert!(Roles::parse(&[]).is_err());
        assert!(Roles::parse(&[",".into()]).is_err());
    }
}
