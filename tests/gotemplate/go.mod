module pgnomad/gotemplate

go 1.19
