//! Access control: `kiln user add|list|revoke`, `kiln grant add|list|remove`, `kiln whoami`,
//! `kiln audit`. All but `whoami` need the admin role.

use crate::api_client::{print_json, ApiArgs, CliError, Output};
use crate::table::Table;
use clap::{Args, Subcommand, ValueEnum};
use kiln_api::{
    AuditEntry, CreateGrant, CreateUser, CreatedUser, Grant, Role, Scope, User, WhoAmI,
};

/// `kiln user ...`.
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
}

/// `kiln grant ...`.
#[derive(Debug, Args)]
pub struct GrantArgs {
    #[command(subcommand)]
    pub command: GrantCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a principal; prints its API token (shown only once).
    Add(UserAddArgs),
    /// List principals.
    List,
    /// Revoke a principal: its token and uid stop working.
    Revoke {
        /// The principal.
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// Where a grant applies: everywhere unless --project, --vm or --volume.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// Only the VMs and volumes of this project.
    #[arg(long, conflicts_with_all = ["vm", "volume"])]
    pub project: Option<String>,
    /// Only this VM.
    #[arg(long, conflicts_with = "volume")]
    pub vm: Option<String>,
    /// Only this volume.
    #[arg(long)]
    pub volume: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        match (&self.project, &self.vm, &self.volume) {
            (Some(p), _, _) => Scope::Project(p.clone()),
            (None, Some(v), _) => Scope::Vm(v.clone()),
            (None, None, Some(v)) => Scope::Volume(v.clone()),
            (None, None, None) => Scope::Global,
        }
    }
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// The principal's name.
    pub name: String,
    /// Grant this role at once.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// A Unix uid that acts as this principal on the socket without a token.
    #[arg(long)]
    pub uid: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Give a principal a role, globally or over a project or VM.
    Add {
        /// The principal.
        principal: String,
        #[arg(value_enum)]
        role: RoleArg,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// List grants.
    List,
    /// Remove a grant by id.
    Remove {
        /// The grant's id (see `kiln grant list`).
        id: i64,
    },
}

fn print_users(out: Output, users: &[User]) -> Result<(), CliError> {
    if out == Output::Json {
        return print_json(&users);
    }
    let mut t = Table::new(&["NAME", "UID", "REVOKED", "CREATED"]);
    for u in users {
        t.row(vec![
            u.name.clone(),
            u.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
            if u.revoked { "yes" } else { "no" }.into(),
            u.created_at.clone(),
        ]);
    }
    t.print()
}

fn print_grants(out: Output, grants: &[Grant]) -> Result<(), CliError> {
    if out == Output::Json {
        return print_json(&grants);
    }
    let mut t = Table::new(&["ID", "PRINCIPAL", "ROLE", "SCOPE"]);
    for g in grants {
        t.row(vec![
            g.id.to_string(),
            g.principal.clone(),
            g.role.as_str().into(),
            g.scope.to_string(),
        ]);
    }
    t.print()
}

/// Runs a `kiln user` command.
pub fn user(args: UserArgs, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client()?;
    match args.command {
        UserCommand::Add(a) => {
            let req = CreateUser {
                name: a.name,
                role: a.role.map(Role::from),
                scope: a.role.map(|_| a.scope.scope()),
                uid: a.uid,
            };
            let created: CreatedUser = client.call("POST", "/v1/users", Some(&req))?;
            if api.output == Output::Json {
                return print_json(&created);
            }
            println!("added {}; its token (shown only this once):", created.user.name);
            println!("{}", created.token);
            Ok(())
        }
        UserCommand::List => print_users(api.output, &client.get::<Vec<User>>("/v1/users")?),
        UserCommand::Revoke { name } => {
            let path = format!("/v1/users/{}/revoke", crate::api_client::encode(&name));
            print_users(api.output, &[client.post::<User>(&path)?])
        }
    }
}

/// Runs a `kiln grant` command.
pub fn grant(args: GrantArgs, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client()?;
    match args.command {
        GrantCommand::Add { principal, role, scope } => {
            let req = CreateGrant { principal, role: role.into(), scope: scope.scope() };
            let g: Grant = client.call("POST", "/v1/grants", Some(&req))?;
            print_grants(api.output, &[g])
        }
        GrantCommand::List => print_grants(api.output, &client.get::<Vec<Grant>>("/v1/grants")?),
        GrantCommand::Remove { id } => {
            client.delete(&format!("/v1/grants/{id}"))?;
            if api.output == Output::Json {
                print_json(&serde_json::json!({ "removed": id }))
            } else {
                println!("removed grant {id}");
                Ok(())
            }
        }
    }
}

/// `kiln whoami`.
pub fn whoami(api: &ApiArgs) -> Result<(), CliError> {
    let me: WhoAmI = api.client()?.get("/v1/whoami")?;
    if api.output == Output::Json {
        return print_json(&me);
    }
    println!("{}", me.principal);
    print_grants(api.output, &me.grants)
}

/// `kiln audit`.
pub fn audit(api: &ApiArgs, limit: u32) -> Result<(), CliError> {
    let entries: Vec<AuditEntry> = api.client()?.get(&format!("/v1/audit?limit={limit}"))?;
    if api.output == Output::Json {
        return print_json(&entries);
    }
    let mut t = Table::new(&["TIME", "PRINCIPAL", "STATUS", "REQUEST"]);
    for e in &entries {
        t.row(vec![
            e.at.clone(),
            e.principal.clone().unwrap_or_else(|| "-".into()),
            e.status.to_string(),
            format!("{} {}", e.method, e.path),
        ]);
    }
    t.print()
}
