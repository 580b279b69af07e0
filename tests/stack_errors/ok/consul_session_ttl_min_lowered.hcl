cluster "main" {}

patroni {
  ttl                    = 10
  consul_session_ttl_min = "5s"
}
