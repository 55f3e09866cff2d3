"""Deployment helpers for the CloudFormation stack in ``infra/cloudformation`` (not part of the wheel)."""
