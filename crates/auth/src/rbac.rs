//! Role-based access control: which roles hold which permissions, and which
//! permission each RPC needs. Methods missing from the table are denied.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{AuthError, Principal, Role};

/// RPCs anyone may call, without credentials.
pub const PUBLIC_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The policy table; settings may replace it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Role → permissions.
    pub roles: BTreeMap<String, BTreeSet<String>>,
    /// Full method (`/user.v1.UserService/GetUser`) → permission.
    pub methods: BTreeMap<String, String>,
}

const METHODS: &[(&str, &str)] = &[
    ("/user.v1.UserService/CreateUser", "user:create"),
    ("/user.v1.UserService/GetUser", "user:read"),
    ("/user.v1.UserService/UpdateUser", "user:write"),
    ("/user.v1.UserService/ListUsers", "user:list"),
    ("/user.v1.UserService/DeleteUser", "user:delete"),
    ("/user.v1.UserService/SetUserStatus", "user:admin"),
    ("/user.v1.UserService/StreamUserActivity", "user:read"),
    ("/user.v1.UserService/CreateApiKey", "apikey:admin"),
    ("/user.v1.UserService/ListApiKeys", "apikey:admin"),
    ("/user.v1.UserService/RevokeApiKey", "apikey:admin"),
    ("/order.v1.OrderService/CreateOrder", "order:write"),
    ("/order.v1.OrderService/GetOrder", "order:read"),
    ("/order.v1.OrderService/ListOrders", "order:read"),
    ("/order.v1.OrderService/CancelOrder", "order:write"),
    ("/order.v1.CatalogService/CreateProduct", "catalog:write"),
    ("/order.v1.CatalogService/GetProduct", "catalog:read"),
    ("/order.v1.CatalogService/ListProducts", "catalog:read"),
    ("/order.v1.CatalogService/AdjustStock", "catalog:write"),
    ("/payment.v1.PaymentService/Charge", "payment:write"),
    ("/payment.v1.PaymentService/Refund", "payment:write"),
    ("/payment.v1.PaymentService/VoidCharge", "payment:write"),
    ("/payment.v1.PaymentService/GetPayment", "payment:read"),
    ("/payment.v1.PaymentService/ListPayments", "payment:read"),
    ("/payment.v1.PaymentService/Reconcile", "payment:audit"),
    // Managing experiments and reading results: admins and services.
    (
        "/experiment.v1.ExperimentService/CreateExperiment",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/GetExperiment",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/ListExperiments",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/UpdateExperiment",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/SetExperimentStatus",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/GetResults",
        "experiment:admin",
    ),
    // Taking part: a user for itself only (the handlers check ownership).
    (
        "/experiment.v1.ExperimentService/GetAssignment",
        "experiment:participate",
    ),
    (
        "/experiment.v1.ExperimentService/TrackEvent",
        "experiment:participate",
    ),
];

const ROLES: &[(Role, &[&str])] = &[
    (
        Role::Admin,
        &[
            "apikey:admin",
            "user:create",
            "user:read",
            "user:write",
            "user:delete",
            "user:list",
            "user:admin",
            "order:read",
            "order:write",
            "order:delete",
            "catalog:read",
            "catalog:write",
            "payment:read",
            "payment:write",
            "payment:audit",
            "experiment:admin",
            "experiment:participate",
        ],
    ),
    // Acts on its own user, orders and payments only (handlers check ownership).
    (
        Role::User,
        &[
            "user:read",
            "user:write",
            "user:delete",
            "order:read",
            "order:write",
            "catalog:read",
            "payment:read",
            "experiment:participate",
        ],
    ),
    (Role::Guest, &["catalog:read"]),
    // Other services: the order service reads users and moves money.
    (
        Role::Service,
        &[
            "user:create",
            "user:read",
            "payment:read",
            "payment:write",
            "catalog:read",
            "experiment:admin",
            "experiment:participate",
        ],
    ),
];

impl Default for Policy {
    fn default() -> Self {
        Self {
            roles: ROLES
                .iter()
                .map(|(role, perms)| {
                    (
                        role.as_str().to_owned(),
                        perms.iter().map(|p| (*p).to_owned()).collect(),
                    )
                })
                .collect(),
            methods: METHODS
                .iter()
                .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
                .collect(),
        }
    }
}

/// What the policy says about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health and reflection: no credentials needed.
    Public,
    /// Credentials needed, then this check.
    Protected,
}

impl Policy {
    /// Whether `path` needs credentials at all.
    pub fn access(&self, path: &str) -> Access {
        if PUBLIC_SERVICES
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            Access::Public
        } else {
            Access::Protected
        }
    }

    /// Whether `principal` may call `path`: one of its roles must hold the
    /// method's permission; unknown methods and unknown roles get nothing.
    pub fn authorize(&self, principal: &Principal, path: &str) -> Result<(), AuthError> {
        let permission = self.methods.get(path).ok_or(AuthError::Forbidden)?;
        let allowed = principal
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .any(|perms| perms.contains(permission));
        if allowed {
            Ok(())
        } else {
            Err(AuthError::Forbidden)
        }
    }
}
