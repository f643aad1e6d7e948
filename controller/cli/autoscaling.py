"""`kumo launch-templates ...` and `kumo autoscaling-groups ...`: launch templates (create,
list, show, versions, create-version, set-default, delete, delete-version) and Auto Scaling
groups (create, list, show, update, set-desired, protect, activities, delete) over REST
/v1/launch-templates and /v1/autoscaling-groups. Output is the API's objects (`--output json`)
or tables."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .context import OutputOpt, id_path, list_params, parse_tags, state
from .output import emit_list, emit_one, emit_record

templates = typer.Typer(help="Launch templates: versioned launch parameters.",
                        no_args_is_help=True)
groups = typer.Typer(help="Auto Scaling groups: a fleet kept at its desired capacity.",
                     no_args_is_help=True)

TEMPLATE_COLUMNS = [("TEMPLATE", "launch_template_id"), ("NAME", "launch_template_name"),
                    ("DEFAULT", "default_version_number"), ("LATEST", "latest_version_number"),
                    ("CREATED", "create_time")]
VERSION_COLUMNS = [("VERSION", "version_number"), ("DEFAULT", "default_version"),
                   ("IMAGE", lambda v: v["launch_template_data"].get("image")),
                   ("TYPE", lambda v: v["launch_template_data"].get("instance_type")),
                   ("DESCRIPTION", "version_description"), ("CREATED", "create_time")]
GROUP_COLUMNS = [("GROUP", "auto_scaling_group_name"), ("MIN", "min_size"), ("MAX", "max_size"),
                 ("DESIRED", "desired_capacity"),
                 ("INSTANCES", lambda g: len(g.get("instances") or [])),
                 ("TEMPLATE", lambda g: g["launch_template"]["launch_template_id"]),
                 ("STATUS", "status")]
ACTIVITY_COLUMNS = [("ACTIVITY", "activity_id"), ("STATUS", "status_code"),
                    ("DESCRIPTION", "description"), ("START", "start_time"),
                    ("MESSAGE", "status_message")]

TemplateArg = Annotated[str, typer.Argument(help="Launch template id or name.")]
GroupArg = Annotated[str, typer.Argument(help="Auto Scaling group name.")]
TagOpt = Annotated[Optional[list[str]], typer.Option("--tag", help="KEY=VALUE, repeatable.")]


def _data(image, instance_type, key, user_data_file, subnet, security_group, root_size, tag,
          data_json) -> dict:
    """Template data from the options given (only those: create-version overrides them)."""
    data = json.loads(data_json.read_text()) if data_json is not None else {}
    given = {"image": image, "instance_type": instance_type, "key_name": key,
             "subnet_id": subnet, "root_disk_gib": root_size,
             "security_group_ids": security_group or None, "tags": parse_tags(tag) or None}
    data.update({k: v for k, v in given.items() if v is not None})
    if user_data_file is not None:
        data["user_data"] = base64.b64encode(user_data_file.read_bytes()).decode("ascii")
    return data


ImageOpt = Annotated[Optional[str], typer.Option("--image", help="Image id or name.")]
TypeOpt = Annotated[Optional[str], typer.Option("--type", help="Instance type.")]
KeyOpt = Annotated[Optional[str], typer.Option("--key", help="Key pair name.")]
UserDataOpt = Annotated[Optional[Path], typer.Option("--user-data-file", exists=True)]
SubnetOpt = Annotated[Optional[str], typer.Option("--subnet", help="Subnet id.")]
SgOpt = Annotated[Optional[list[str]], typer.Option("--security-group", help="Repeatable.")]
RootOpt = Annotated[Optional[int], typer.Option("--root-size", min=1, help="Root disk GiB.")]
JsonOpt = Annotated[Optional[Path], typer.Option(
    "--data-json", exists=True, help="Template data as JSON (options override it), e.g. "
    "block_device_mappings.")]


@templates.command("create")
def lt_create(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Template name.")],
              image: ImageOpt = None, instance_type: TypeOpt = None, key: KeyOpt = None,
              user_data_file: UserDataOpt = None, subnet: SubnetOpt = None,
              security_group: SgOpt = None, root_size: RootOpt = None, tag: TagOpt = None,
              data_json: JsonOpt = None,
              description: Annotated[Optional[str], typer.Option("--description")] = None,
              output: OutputOpt = None) -> None:
    """Create a launch template (its version 1), validated as `instances run` validates."""
    st = state(ctx, output)
    body = {"launch_template_name": name, "version_description": description,
            "launch_template_data": _data(image, instance_type, key, user_data_file, subnet,
                                          security_group, root_size, tag, data_json)}
    emit_one(st, st.api().post("/v1/launch-templates", json=body), TEMPLATE_COLUMNS)


@templates.command("create-version")
def lt_create_version(ctx: typer.Context, template: TemplateArg,
                      source_version: Annotated[Optional[str], typer.Option(
                          "--source-version", help="Start from this version ($Default, "
                          "$Latest, N); the options given override it.")] = None,
                      image: ImageOpt = None, instance_type: TypeOpt = None, key: KeyOpt = None,
                      user_data_file: UserDataOpt = None, subnet: SubnetOpt = None,
                      security_group: SgOpt = None, root_size: RootOpt = None,
                      tag: TagOpt = None, data_json: JsonOpt = None,
                      description: Annotated[Optional[str], typer.Option("--description")] =
                      None, output: OutputOpt = None) -> None:
    """Add a version to a template."""
    st = state(ctx, output)
    body = {"source_version": source_version, "version_description": description,
            "launch_template_data": _data(image, instance_type, key, user_data_file, subnet,
                                          security_group, root_size, tag, data_json)}
    emit_one(st, st.api().post(id_path("launch-templates", "launch template", template,
                                       "versions"), json=body), VERSION_COLUMNS)


@templates.command("list")
def lt_list(ctx: typer.Context,
            name: Annotated[Optional[str], typer.Option("--name", help="Filter by name.")] =
            None, output: OutputOpt = None) -> None:
    """List launch templates, following pagination."""
    st = state(ctx, output)
    params = list_params(None, launch_template_name=name)
    emit_list(st, st.api().paginate("/v1/launch-templates", params), TEMPLATE_COLUMNS)


@templates.command("show")
def lt_show(ctx: typer.Context, template: TemplateArg, output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().get(id_path("launch-templates", "launch template", template)))


@templates.command("versions")
def lt_versions(ctx: typer.Context, template: TemplateArg,
                version: Annotated[Optional[list[str]], typer.Option(
                    "--version", help="Only these ($Default, $Latest, N); repeatable.")] = None,
                output: OutputOpt = None) -> None:
    """List a template's versions."""
    st = state(ctx, output)
    params = {"versions": ",".join(version)} if version else {}
    emit_list(st, st.api().paginate(id_path("launch-templates", "launch template", template,
                                            "versions"), params), VERSION_COLUMNS)


@templates.command("set-default")
def lt_set_default(ctx: typer.Context, template: TemplateArg,
                   version: Annotated[str, typer.Argument(help="N or $Latest.")],
                   output: OutputOpt = None) -> None:
    """Make a version the template's default."""
    st = state(ctx, output)
    emit_one(st, st.api().patch(id_path("launch-templates", "launch template", template),
                                {"default_version": version}), TEMPLATE_COLUMNS)


@templates.command("delete")
def lt_delete(ctx: typer.Context, template: TemplateArg, output: OutputOpt = None) -> None:
    """Delete a template and all its versions."""
    st = state(ctx, output)
    emit_record(st, st.api().delete(id_path("launch-templates", "launch template", template)))


@templates.command("delete-version")
def lt_delete_version(ctx: typer.Context, template: TemplateArg,
                      version: Annotated[str, typer.Argument(help="Version number.")],
                      output: OutputOpt = None) -> None:
    """Delete one version (not the default one)."""
    st = state(ctx, output)
    emit_record(st, st.api().delete(id_path("launch-templates", "launch template", template,
                                            f"versions/{int(version)}")))


# -- groups --------------------------------------------------------------------------------------
def _gpath(name: str, action: str = "") -> str:
    return id_path("autoscaling-groups", "group", name, action)


@groups.command("create")
def asg_create(ctx: typer.Context, name: GroupArg,
               template: Annotated[str, typer.Option("--template", help="Template id or name.")],
               subnet: Annotated[list[str], typer.Option("--subnet", help="Repeatable; one VPC.")],
               min_size: Annotated[int, typer.Option("--min", min=0)],
               max_size: Annotated[int, typer.Option("--max", min=0)],
               desired: Annotated[Optional[int], typer.Option("--desired", min=0)] = None,
               version: Annotated[str, typer.Option("--version")] = "$Default",
               grace: Annotated[int, typer.Option("--health-check-grace-period")] = 300,
               cooldown: Annotated[int, typer.Option("--default-cooldown")] = 300,
               termination_policy: Annotated[Optional[list[str]], typer.Option(
                   "--termination-policy", help="Default, OldestInstance, NewestInstance, "
                   "OldestLaunchTemplate; repeatable.")] = None,
               protect: Annotated[bool, typer.Option(
                   "--protect-new-instances", help="New instances protected from scale in.")]
               = False, tag: TagOpt = None, output: OutputOpt = None) -> None:
    """Create an Auto Scaling group."""
    st = state(ctx, output)
    ref = ({"launch_template_id": template} if template.startswith("lt-")
           else {"launch_template_name": template})
    body = {"auto_scaling_group_name": name, "launch_template": {**ref, "version": version},
            "min_size": min_size, "max_size": max_size, "desired_capacity": desired,
            "subnet_ids": subnet, "health_check_grace_period": grace,
            "default_cooldown": cooldown, "termination_policies": termination_policy or
            ["Default"], "tags": parse_tags(tag),
            "new_instances_protected_from_scale_in": protect}
    emit_one(st, st.api().post("/v1/autoscaling-groups", json=body), GROUP_COLUMNS)


@groups.command("list")
def asg_list(ctx: typer.Context, tag: TagOpt = None, output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_list(st, st.api().paginate("/v1/autoscaling-groups", list_params(tag)), GROUP_COLUMNS)


@groups.command("show")
def asg_show(ctx: typer.Context, name: GroupArg, output: OutputOpt = None) -> None:
    """Show a group with its instances (lifecycle state, health, protection)."""
    st = state(ctx, output)
    emit_record(st, st.api().get(_gpath(name)))


@groups.command("update")
def asg_update(ctx: typer.Context, name: GroupArg,
               min_size: Annotated[Optional[int], typer.Option("--min", min=0)] = None,
               max_size: Annotated[Optional[int], typer.Option("--max", min=0)] = None,
               desired: Annotated[Optional[int], typer.Option("--desired", min=0)] = None,
               template: Annotated[Optional[str], typer.Option("--template")] = None,
               version: Annotated[str, typer.Option("--version")] = "$Default",
               output: OutputOpt = None) -> None:
    """Change a group's sizes or launch template."""
    st = state(ctx, output)
    body: dict = {"min_size": min_size, "max_size": max_size, "desired_capacity": desired}
    if template is not None:
        key = "launch_template_id" if template.startswith("lt-") else "launch_template_name"
        body["launch_template"] = {key: template, "version": version}
    emit_one(st, st.api().patch(_gpath(name), {k: v for k, v in body.items() if v is not None}),
             GROUP_COLUMNS)


@groups.command("set-desired")
def asg_set_desired(ctx: typer.Context, name: GroupArg,
                    desired: Annotated[int, typer.Argument(min=0)],
                    output: OutputOpt = None) -> None:
    """Set the desired capacity (within min and max)."""
    st = state(ctx, output)
    emit_one(st, st.api().post(_gpath(name, "desired-capacity"),
                               json={"desired_capacity": desired}), GROUP_COLUMNS)


@groups.command("protect")
def asg_protect(ctx: typer.Context, name: GroupArg,
                instance: Annotated[list[str], typer.Option("--instance", help="Repeatable.")],
                off: Annotated[bool, typer.Option("--off", help="Remove protection.")] = False,
                output: OutputOpt = None) -> None:
    """Protect instances from scale in (or --off)."""
    st = state(ctx, output)
    emit_one(st, st.api().post(_gpath(name, "instance-protection"), json={
        "instance_ids": instance, "protected_from_scale_in": not off}), GROUP_COLUMNS)


@groups.command("activities")
def asg_activities(ctx: typer.Context, name: GroupArg, output: OutputOpt = None) -> None:
    """The group's activity history (launches, terminations, failures)."""
    st = state(ctx, output)
    emit_list(st, st.api().paginate(_gpath(name, "activities")), ACTIVITY_COLUMNS)


@groups.command("delete")
def asg_delete(ctx: typer.Context, name: GroupArg,
               force: Annotated[bool, typer.Option(
                   "--force", help="Terminate its instances too.")] = False,
               output: OutputOpt = None) -> None:
    """Delete a group (with instances: only with --force)."""
    st = state(ctx, output)
    emit_record(st, st.api().delete(_gpath(name), **({"force": "true"} if force else {})))
