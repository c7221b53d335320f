"""The embedded HealthImaging service: a durable on-disk store served to real boto3 clients and the AWS CLI."""
