//! Networks: `kiln network create|list|show|delete`.

use crate::api_client::{encode, print_json, ApiArgs, CliError, Output};
use crate::table::Table;
use clap::{Args, Subcommand};
use kiln_api::{CreateNetwork, Network};
use std::io::Write;

#[derive(Debug, Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    pub command: NetworkCommand,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network: a bridge with DHCP and DNS (VMs resolve each other by name), isolated
    /// from other networks and from the host; join it with `kiln create --nic NAME`.
    Create(CreateArgs),
    /// List the networks you may see.
    List,
    /// Show one network and its NICs' addresses.
    Show(NameArg),
    /// Delete a network (its bridge, DHCP and DNS server and rules); refused while a VM
    /// definition has a NIC on it.
    Delete(NameArg),
    /// Change a network: attach an ACL to its NICs (those with their own keep theirs) or
    /// detach it; running VMs follow at once.
    Set(SetArgs),
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The network's name.
    pub name: String,
    #[command(flatten)]
    pub acl: crate::acl::AclChoice,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name: 1-63 of a-z 0-9 - _ . starting with a letter or digit.
    pub name: String,
    /// IPv4 subnet, /16 to /29 (the host takes its first address) [default: the first free
    /// /24 in 10.77.0.0/16].
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Masquerade the network's traffic to the host's uplink, so VMs reach outside.
    #[arg(long)]
    pub nat: bool,
    /// VMs on the network reach the gateway only, not each other.
    #[arg(long)]
    pub isolated_ports: bool,
    /// Project (grants on the project cover the network; its VMs may join it).
    #[arg(long, default_value = "default")]
    pub project: String,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The network's name.
    pub name: String,
}

/// Runs one network command.
pub fn run(args: NetworkArgs, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client()?;
    let out = api.output;
    let path = |name: &str| format!("/v1/networks/{}", encode(name));
    match args.command {
        NetworkCommand::Create(a) => {
            let spec = CreateNetwork {
                name: a.name,
                subnet: a.subnet,
                nat: a.nat,
                isolated_ports: a.isolated_ports,
                project: a.project,
            };
            print_network(out, &client.call("POST", "/v1/networks", Some(&spec))?)
        }
        NetworkCommand::List => {
            let networks: Vec<Network> = client.get("/v1/networks")?;
            if out == Output::Json {
                return print_json(&networks);
            }
            let mut t = Table::new(&["NAME", "PROJECT", "SUBNET", "GATEWAY", "NAT", "NICS"]);
            for n in &networks {
                t.row(vec![
                    n.name.clone(),
                    n.project.clone(),
                    n.subnet.clone(),
                    n.gateway.clone(),
                    if n.nat { "yes" } else { "no" }.to_owned(),
                    n.nics.len().to_string(),
                ]);
            }
            t.print()
        }
        NetworkCommand::Show(a) => print_network(out, &client.get(&path(&a.name))?),
        NetworkCommand::Set(a) => {
            client.put(&format!("{}/acl", path(&a.name)), &a.acl.body())?;
            a.acl.report(out, &format!("network {}", a.name))
        }
        NetworkCommand::Delete(a) => {
            client.delete(&path(&a.name))?;
            if out == Output::Json {
                print_json(&serde_json::json!({ "deleted": a.name }))
            } else {
                println!("deleted network {}", a.name);
                Ok(())
            }
        }
    }
}

fn print_network(out: Output, n: &Network) -> Result<(), CliError> {
    if out == Output::Json {
        return print_json(n);
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let mut text: String = [
        ("name", n.name.clone()),
        ("project", n.project.clone()),
        ("subnet", n.subnet.clone()),
        ("gateway", n.gateway.clone()),
        ("bridge", n.bridge.clone()),
        ("nat", yes_no(n.nat)),
        ("isolated", yes_no(n.isolated_ports)),
        ("acl", n.acl.clone().unwrap_or_else(|| "-".to_owned())),
        ("created", n.created_at.clone()),
    ]
    .iter()
    .map(|(k, v)| format!("{k:<9} {v}\n"))
    .collect();
    for nic in &n.nics {
        text.push_str(&format!("nic       {} {} {}\n", nic.vm, nic.ip, nic.mac));
    }
    std::io::stdout().lock().write_all(text.as_bytes()).map_err(CliError::Stdout)
}
