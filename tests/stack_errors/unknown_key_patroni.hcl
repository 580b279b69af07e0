cluster "main" {}

patroni {
  loopwait = 2
}
