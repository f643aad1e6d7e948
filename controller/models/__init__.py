"""SQLModel schema families (XBase -> XCreate/XPublic -> X(table=True)) for every controller resource.

Importing this package registers every table on SQLModel.metadata (Alembic's target).
"""
from controller.models.alarms import AlarmHistory, MetricAlarm
from controller.models.autoscaling import AutoScalingGroup, AutoScalingInstance, ScalingActivity
from controller.models.autoscaling_policies import ScalingPolicy, ScheduledAction
from controller.models.step_policies import StepScalingPolicy
from controller.models.launch_template import LaunchTemplate, LaunchTemplateVersion
from controller.models.billing import Bill, Budget, Price, UsageInterval
from controller.models.account import Account, AccountCreate, AccountCreated, AccountPublic
from controller.models.console import (ConsoleSession, ConsoleUser, ConsoleUserCreate,
                                      ConsoleUserPublic, SessionPublic, SignInRequest)
from controller.models.event import Event, EventPublic
from controller.models.controller_lease import ControllerLease, ControllerProcess
from controller.models.host_identity import (AgentCertificate, AgentCertificateRequest,
                                            HostCertificate, HostJoinToken, JoinTokenCreate,
                                            JoinTokenCreated, JoinTokenPublic)
from controller.models.host import Host, HostPublic
from controller.models.image import Image, ImagePublic, ImageRegister
from controller.models.instance import (ClientToken, ConsoleOutput, Instance,
                                        InstanceGroupsRequest, InstancePublic, InstanceStatusPublic,
                                        RunInstancesRequest, RunInstancesResponse, ModifyInstanceRequest,
                                        InstanceMetadataOptions, InstanceMetadataOptionsResponse)
from controller.models.instance_type import InstanceType, InstanceTypeCreate, InstanceTypePublic
from controller.models.metric import MetricDatum, MetricRollup
from controller.models.key_pair import (KeyPair, KeyPairCreate, KeyPairCreated, KeyPairDeleted,
                                        KeyPairPublic)
from controller.models.security_group import (InstanceSecurityGroup, SecurityGroup,
                                              SecurityGroupRule)
from controller.models.snapshot import Snapshot, SnapshotCreate, SnapshotPublic, SnapshotTags
from controller.models.volume import (AttachmentPublic, Volume, VolumeAttach,
                                      VolumeAttachmentRow, VolumeCreate, VolumeDetach,
                                      VolumeModify, VolumePublic)
from controller.models.vpc import (DefaultVpcMarker, ElasticIp, InternetGateway, IpAllocation,
                                   NatGateway, Route, RouteTable, RouteTableAssociation, Subnet, Vpc)

__all__ = [
    "Account", "AccountCreate", "AccountCreated", "AccountPublic", "Event", "EventPublic", "Host",
    "HostPublic", "Image", "ImagePublic", "ImageRegister", "ClientToken", "ConsoleOutput",
    "Instance", "InstanceGroupsRequest", "InstancePublic", "InstanceStatusPublic",
    "RunInstancesRequest", "RunInstancesResponse", "ModifyInstanceRequest",
    "InstanceMetadataOptions", "InstanceMetadataOptionsResponse", "InstanceType",
    "InstanceTypeCreate", "InstanceTypePublic", "KeyPair", "KeyPairCreate", "KeyPairCreated",
    "KeyPairDeleted", "KeyPairPublic", "DefaultVpcMarker", "ElasticIp", "InternetGateway",
    "IpAllocation", "NatGateway", "Route", "RouteTable", "RouteTableAssociation", "Subnet", "Vpc",
    "InstanceSecurityGroup", "SecurityGroup", "SecurityGroupRule", "AttachmentPublic", "Volume",
    "VolumeAttach", "VolumeAttachmentRow", "VolumeCreate", "VolumeDetach", "VolumeModify",
    "VolumePublic", "Snapshot", "SnapshotCreate", "SnapshotPublic", "SnapshotTags",
    "MetricDatum", "MetricRollup", "AutoScalingGroup", "AutoScalingInstance", "ScalingActivity",
    "LaunchTemplate", "LaunchTemplateVersion", "ScalingPolicy", "ScheduledAction",
    "StepScalingPolicy", "MetricAlarm", "AlarmHistory", "UsageInterval", "Price", "Bill", "Budget",
    "ControllerLease", "ControllerProcess",
    "AgentCertificate", "AgentCertificateRequest", "HostCertificate", "HostJoinToken",
    "JoinTokenCreate", "JoinTokenCreated", "JoinTokenPublic",
    "ConsoleSession", "ConsoleUser", "ConsoleUserCreate", "ConsoleUserPublic", "SessionPublic",
    "SignInRequest",
]
