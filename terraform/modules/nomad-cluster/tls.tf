# A private CA and the agents' certificates. Servers: server.<region>.nomad and
# server.<dc>.consul (required by verify_server_hostname), the load balancer's name and
# localhost. Clients share one client.<region>.nomad certificate. The private keys go to SSM
# SecureString parameters (and, like every secret here, into the Terraform state: keep the state
# encrypted and private).

resource "tls_private_key" "ca" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "ca" {
  private_key_pem       = tls_private_key.ca.private_key_pem
  is_ca_certificate     = true
  validity_period_hours = 24 * 365 * 5

  subject {
    common_name  = "${var.name} Nomad/Consul CA"
    organization = "pgnomad"
  }

  allowed_uses = ["cert_signing", "crl_signing", "digital_signature"]
}

resource "tls_private_key" "server" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "server" {
  private_key_pem = tls_private_key.server.private_key_pem
  dns_names = [
    "server.${var.nomad_region}.nomad",
    "server.${var.datacenter}.consul",
    "localhost",
    aws_lb.api.dns_name,
  ]
  ip_addresses = ["127.0.0.1"]

  subject {
    common_name = "server.${var.nomad_region}.nomad"
  }
}

resource "tls_locally_signed_cert" "server" {
  cert_request_pem      = tls_cert_request.server.cert_request_pem
  ca_private_key_pem    = tls_private_key.ca.private_key_pem
  ca_cert_pem           = tls_self_signed_cert.ca.cert_pem
  validity_period_hours = 24 * 365
  allowed_uses          = ["digital_signature", "key_encipherment", "server_auth", "client_auth"]
}

resource "tls_private_key" "client" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "client" {
  private_key_pem = tls_private_key.client.private_key_pem
  dns_names       = ["client.${var.nomad_region}.nomad", "client.${var.datacenter}.consul", "localhost"]
  ip_addresses    = ["127.0.0.1"]

  subject {
    common_name = "client.${var.nomad_region}.nomad"
  }
}

resource "tls_locally_signed_cert" "client" {
  cert_request_pem      = tls_cert_request.client.cert_request_pem
  ca_private_key_pem    = tls_private_key.ca.private_key_pem
  ca_cert_pem           = tls_self_signed_cert.ca.cert_pem
  validity_period_hours = 24 * 365
  allowed_uses          = ["digital_signature", "key_encipherment", "server_auth", "client_auth"]
}
