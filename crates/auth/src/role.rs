//! The built-in roles (DESIGN §5: the article's admin, user and guest, plus
//! service). Tokens and API keys carry role names as text — a policy from
//! settings may define more — but code that means a built-in role names it
//! through [`Role`].

/// A built-in role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, on everyone's resources.
    Admin,
    /// A customer: its own user, orders and payments.
    User,
    /// The catalog only.
    Guest,
    /// Another service (the order service calling users and payments).
    Service,
}

impl Role {
    /// Every built-in role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::User, Role::Guest, Role::Service];

    /// The name tokens and keys carry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
            Self::Guest => "guest",
            Self::Service => "service",
        }
    }

    /// The built-in role of this name, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }

    /// "admin, user, guest, service", for messages.
    pub fn names() -> String {
        Self::ALL.map(Role::as_str).join(", ")
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
