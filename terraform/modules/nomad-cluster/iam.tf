data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-node"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = var.tags
}

data "aws_iam_policy_document" "node" {
  # Cloud auto-join (Consul and Nomad retry_join "provider=aws ...").
  statement {
    sid       = "AutoJoin"
    actions   = ["ec2:DescribeInstances", "ec2:DescribeTags"]
    resources = ["*"]
  }

  # The AWS EBS CSI driver (controller and node plugins), as listed in the driver's example
  # IAM policy. Deletion and attachment are limited to volumes the driver created.
  statement {
    sid = "EbsCsiDescribe"
    actions = [
      "ec2:DescribeAvailabilityZones",
      "ec2:DescribeInstances",
      "ec2:DescribeSnapshots",
      "ec2:DescribeTags",
      "ec2:DescribeVolumes",
      "ec2:DescribeVolumesModifications",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "EbsCsiCreate"
    actions   = ["ec2:CreateVolume", "ec2:CreateSnapshot", "ec2:ModifyVolume", "ec2:CreateTags"]
    resources = ["*"]
  }

  statement {
    sid       = "EbsCsiAttach"
    actions   = ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:DeleteVolume", "ec2:DeleteSnapshot", "ec2:DeleteTags"]
    resources = ["*"]
    condition {
      test     = "StringLike"
      variable = "ec2:ResourceTag/ebs.csi.aws.com/cluster"
      values   = ["true"]
    }
  }

  statement {
    sid       = "EbsCsiAttachToInstances"
    actions   = ["ec2:AttachVolume", "ec2:DetachVolume"]
    resources = ["arn:aws:ec2:*:*:instance/*"]
  }

  # The cluster's secrets (tokens, gossip keys, TLS keys) written by Terraform.
  statement {
    sid       = "ReadClusterSecrets"
    actions   = ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"]
    resources = ["arn:aws:ssm:*:*:parameter${local.ssm_prefix}/*"]
  }

  # pgBackRest repositories (repo1-s3-key-type=auto uses the instance role).
  dynamic "statement" {
    for_each = length(var.backup_bucket_arns) > 0 ? [1] : []
    content {
      sid       = "BackupBuckets"
      actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
      resources = var.backup_bucket_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.backup_bucket_arns) > 0 ? [1] : []
    content {
      sid       = "BackupObjects"
      actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
      resources = [for a in var.backup_bucket_arns : "${a}/*"]
    }
  }

  statement {
    sid       = "DecryptClusterSecrets"
    actions   = ["kms:Decrypt"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "node" {
  name   = "${var.name}-node"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.node.json
}

# Session Manager instead of SSH.
resource "aws_iam_role_policy_attachment" "ssm_core" {
  role       = aws_iam_role.node.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  name = "${var.name}-node"
  role = aws_iam_role.node.name
  tags = var.tags
}
