package agent

import "k8s.io/apimachinery/pkg/util/intstr"

func intOrString(port int32) intstr.IntOrString { return intstr.FromInt32(port) }
