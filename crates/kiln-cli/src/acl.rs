//! ACLs between VMs: `kiln acl create|list|show|delete`, `kiln acl rule add|list|remove`,
//! and attaching them: `kiln network set NET --acl NAME`, `kiln nic set VM N --acl NAME`.

use crate::api_client::{encode, print_json, ApiArgs, CliError, Output};
use crate::table::Table;
use clap::{Args, Subcommand, ValueEnum};
use kiln_api::{Acl, AclAction, AclProtocol, AclRule, CreateAcl, CreateAclRule, Direction, SetAcl};
use std::io::Write;

#[derive(Debug, Args)]
pub struct AclArgs {
    #[command(subcommand)]
    pub command: AclCommand,
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Create an empty ACL; attach it with `kiln network set NET --acl NAME` (every NIC on the
    /// network) or `kiln nic set VM N --acl NAME` / `kiln create --nic NET,acl=NAME` (one NIC,
    /// instead of its network's). Once attached, traffic no rule allows is rejected;
    /// established and related traffic, and DHCP and DNS with the gateway, always pass.
    Create(CreateArgs),
    /// List the ACLs you may see.
    List,
    /// Show an ACL: its rules in the order they are evaluated, and where it is attached.
    Show(NameArg),
    /// Delete an ACL; refused while attached.
    Delete(NameArg),
    /// An ACL's rules: evaluated drop first, then reject, then allow.
    Rule(RuleArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name: 1-63 of a-z 0-9 - _ . starting with a letter or digit.
    pub name: String,
    /// Project (it attaches to that project's networks and NICs).
    #[arg(long, default_value = "default")]
    pub project: String,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The ACL's name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct RuleArgs {
    #[command(subcommand)]
    pub command: RuleCommand,
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add a rule; the VMs using the ACL follow it at once (connections already established
    /// go on).
    Add(AddRuleArgs),
    /// List an ACL's rules in the order they are evaluated.
    List(NameArg),
    /// Remove a rule by its id (from `kiln acl rule list`); applied at once.
    Remove(RemoveRuleArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DirectionArg {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActionArg {
    Allow,
    Drop,
    Reject,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Args)]
pub struct AddRuleArgs {
    /// The ACL.
    pub name: String,
    /// ingress: traffic to the VM; egress: traffic from it.
    #[arg(long, value_enum)]
    pub direction: DirectionArg,
    /// What a match does: allow, drop (silently) or reject (TCP reset, or ICMP).
    #[arg(long, value_enum)]
    pub action: ActionArg,
    /// Only this protocol [default: any].
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// Only this destination port or range (with --protocol tcp or udp).
    #[arg(long, value_name = "N[-M]")]
    pub port: Option<String>,
    /// Ingress only: where the traffic comes from.
    #[arg(long, value_name = "CIDR|vm:NAME|network:NAME", conflicts_with = "destination")]
    pub source: Option<String>,
    /// Egress only: where the traffic goes.
    #[arg(long, value_name = "CIDR|vm:NAME|network:NAME")]
    pub destination: Option<String>,
}

#[derive(Debug, Args)]
pub struct RemoveRuleArgs {
    /// The ACL.
    pub name: String,
    /// The rule's id.
    pub id: i64,
}

/// `kiln network set` and `kiln nic set`: an ACL, or none.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct AclChoice {
    /// Attach this ACL.
    #[arg(long, value_name = "NAME")]
    pub acl: Option<String>,
    /// Detach the ACL.
    #[arg(long)]
    pub no_acl: bool,
}

impl AclChoice {
    pub fn body(&self) -> SetAcl {
        SetAcl { acl: if self.no_acl { None } else { self.acl.clone() } }
    }

    /// `attached ACL x to what` or `detached the ACL of what`.
    pub fn report(&self, out: Output, what: &str) -> Result<(), CliError> {
        let body = self.body();
        if out == Output::Json {
            return print_json(&serde_json::json!({ "target": what, "acl": body.acl }));
        }
        match body.acl {
            Some(acl) => println!("attached ACL {acl} to {what}"),
            None => println!("detached the ACL of {what}"),
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct NicArgs {
    #[command(subcommand)]
    pub command: NicCommand,
}

#[derive(Debug, Subcommand)]
pub enum NicCommand {
    /// Attach an ACL to one NIC of a VM, used instead of its network's, or detach it (the NIC
    /// then uses its network's); a running VM follows at once.
    Set(NicSetArgs),
}

#[derive(Debug, Args)]
pub struct NicSetArgs {
    /// The VM.
    pub vm: String,
    /// The NIC's position, from 0 (`kiln show` lists them in order).
    pub position: usize,
    #[command(flatten)]
    pub acl: AclChoice,
}

/// Runs `kiln nic set`.
pub fn nic(args: NicArgs, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client()?;
    let NicCommand::Set(a) = args.command;
    client.put(&format!("/v1/vms/{}/nics/{}/acl", encode(&a.vm), a.position), &a.acl.body())?;
    a.acl.report(api.output, &format!("NIC {} of VM {}", a.position, a.vm))
}

fn path(name: &str) -> String {
    format!("/v1/acls/{}", encode(name))
}

/// Runs one ACL command.
pub fn run(args: AclArgs, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client()?;
    let out = api.output;
    match args.command {
        AclCommand::Create(a) => {
            let spec = CreateAcl { name: a.name, project: a.project };
            print_acl(out, &client.call("POST", "/v1/acls", Some(&spec))?)
        }
        AclCommand::List => {
            let acls: Vec<Acl> = client.get("/v1/acls")?;
            if out == Output::Json {
                return print_json(&acls);
            }
            let mut t = Table::new(&["NAME", "PROJECT", "RULES", "ATTACHED TO"]);
            for a in &acls {
                t.row(vec![a.name.clone(), a.project.clone(), a.rules.len().to_string(), users(a)]);
            }
            t.print()
        }
        AclCommand::Show(a) => print_acl(out, &client.get(&path(&a.name))?),
        AclCommand::Delete(a) => {
            client.delete(&path(&a.name))?;
            if out == Output::Json {
                print_json(&serde_json::json!({ "deleted": a.name }))
            } else {
                println!("deleted ACL {}", a.name);
                Ok(())
            }
        }
        AclCommand::Rule(r) => match r.command {
            RuleCommand::Add(a) => {
                let rule = CreateAclRule {
                    direction: match a.direction {
                        DirectionArg::Ingress => Direction::Ingress,
                        DirectionArg::Egress => Direction::Egress,
                    },
                    action: match a.action {
                        ActionArg::Allow => AclAction::Allow,
                        ActionArg::Drop => AclAction::Drop,
                        ActionArg::Reject => AclAction::Reject,
                    },
                    protocol: a.protocol.map(|p| match p {
                        ProtocolArg::Tcp => AclProtocol::Tcp,
                        ProtocolArg::Udp => AclProtocol::Udp,
                        ProtocolArg::Icmp => AclProtocol::Icmp,
                    }),
                    port: a.port,
                    source: a.source,
                    destination: a.destination,
                };
                let added: AclRule =
                    client.call("POST", &format!("{}/rules", path(&a.name)), Some(&rule))?;
                if out == Output::Json {
                    return print_json(&added);
                }
                println!("added rule {} to ACL {}: {}", added.id, a.name, describe(&added));
                Ok(())
            }
            RuleCommand::List(a) => {
                let rules: Vec<AclRule> = client.get(&format!("{}/rules", path(&a.name)))?;
                if out == Output::Json {
                    return print_json(&rules);
                }
                rule_table(&rules).print()
            }
            RuleCommand::Remove(a) => {
                client.delete(&format!("{}/rules/{}", path(&a.name), a.id))?;
                if out == Output::Json {
                    print_json(&serde_json::json!({ "acl": a.name, "removed": a.id }))
                } else {
                    println!("removed rule {} of ACL {}", a.id, a.name);
                    Ok(())
                }
            }
        },
    }
}

fn users(a: &Acl) -> String {
    let mut users: Vec<String> = a.networks.iter().map(|n| format!("network {n}")).collect();
    users.extend(a.nics.iter().map(|n| format!("nic {}/{}", n.vm, n.position)));
    if users.is_empty() {
        "-".to_owned()
    } else {
        users.join(", ")
    }
}

fn text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `drop ingress tcp port 80 from vm:a`.
fn describe(r: &AclRule) -> String {
    let mut words = vec![text(&r.action), text(&r.direction)];
    words.push(r.protocol.map(|p| text(&p)).unwrap_or_else(|| "any".to_owned()));
    if let Some(port) = &r.port {
        words.push(format!("port {port}"));
    }
    if let Some(source) = &r.source {
        words.push(format!("from {source}"));
    }
    if let Some(destination) = &r.destination {
        words.push(format!("to {destination}"));
    }
    words.join(" ")
}

fn rule_table(rules: &[AclRule]) -> Table {
    let mut t = Table::new(&["ID", "ACTION", "DIRECTION", "PROTOCOL", "PORT", "PEER"]);
    for r in rules {
        t.row(vec![
            r.id.to_string(),
            text(&r.action),
            text(&r.direction),
            r.protocol.map(|p| text(&p)).unwrap_or_else(|| "any".to_owned()),
            r.port.clone().unwrap_or_else(|| "any".to_owned()),
            r.source.clone().or_else(|| r.destination.clone()).unwrap_or_else(|| "any".to_owned()),
        ]);
    }
    t
}

fn print_acl(out: Output, a: &Acl) -> Result<(), CliError> {
    if out == Output::Json {
        return print_json(a);
    }
    let mut text = format!(
        "name      {}\nproject   {}\nattached  {}\ncreated   {}\n",
        a.name,
        a.project,
        users(a),
        a.created_at
    );
    for r in &a.rules {
        text.push_str(&format!("rule {:<4} {}\n", r.id, describe(r)));
    }
    std::io::stdout().lock().write_all(text.as_bytes()).map_err(CliError::Stdout)
}
